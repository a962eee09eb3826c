"""The corruption recipe for data of mixed quality: the blur is a normalised Gaussian of the given
width, the noise has the given std and is the image's own, the corrupted images are chosen
outside the training subset and leave the held-out images the evaluation needs."""

import json

import numpy as np
import pytest

from ambient_jax.data import DataError, corrupt, load_split
from ambient_jax.training import training_data


def test_blur_of_a_point_is_the_normalised_gaussian_of_that_width():
    width, size = 1.5, 21
    image = np.zeros((1, size, size, 1), np.float32)
    image[0, 10, 10, 0] = 1.0
    blurred = corrupt.gaussian_blur(image, width)[0, :, :, 0]
    assert abs(blurred.sum() - 1) < 1e-5  # mass kept
    offsets = np.arange(size) - 10
    by_hand = np.exp(-0.5 * (offsets / width) ** 2)
    by_hand = np.outer(by_hand, by_hand) / np.outer(by_hand, by_hand).sum()
    np.testing.assert_allclose(blurred, by_hand, atol=2e-4)
    # its spread is the width: variance of the blurred point along one axis
    assert abs(np.sqrt((blurred.sum(1) * offsets**2).sum()) - width) < 0.02
    constant = np.full((2, 8, 8, 1), 0.3, np.float32)  # reflected edges keep a flat image flat
    np.testing.assert_allclose(corrupt.gaussian_blur(constant, 2.0), constant, atol=1e-6)


def test_noise_has_the_level_as_std_and_belongs_to_the_image():
    images = np.zeros((40, 16, 16, 1), np.float32)
    indices = np.arange(40) * 7
    noised = corrupt.corrupt(images, indices, "noise", 0.8, seed=3)
    assert abs(noised.std() - 0.8) < 0.02 and abs(noised.mean()) < 0.03  # 10,240 draws
    # the same image gets the same noise whatever else is in the batch
    again = corrupt.corrupt(images[5:6], indices[5:6], "noise", 0.8, seed=3)
    np.testing.assert_array_equal(again[0], noised[5])
    assert not np.array_equal(corrupt.corrupt(images[5:6], indices[5:6], "noise", 0.8, 4), again)


def test_corrupted_images_lie_outside_the_subset_and_leave_the_held_out_set():
    train = np.sort(np.random.RandomState(0).permutation(5000)[:100])
    chosen = corrupt.choose_corrupted(5000, train, 3900, keep_heldout=1000, seed=1)
    assert len(chosen) == 3900 and len(np.intersect1d(chosen, train)) == 0
    assert 5000 - len(train) - len(chosen) == 1000
    np.testing.assert_array_equal(
        chosen, corrupt.choose_corrupted(5000, train, 3900, keep_heldout=1000, seed=1)
    )
    with pytest.raises(DataError, match="data.corrupt_count = 3901 leaves fewer than 1000"):
        corrupt.choose_corrupted(5000, train, 3901, keep_heldout=1000, seed=1)
    for kind in ("jpeg", "classes"):  # other digits are taken as they are, never corrupted
        with pytest.raises(DataError, match="corrupt_kind must be 'noise' or 'blur' to corrupt"):
            corrupt.corrupt(np.zeros((1, 4, 4, 1)), [0], kind, 1.0, 0)


def mixed_data(**fields):
    from configs.mnist import get_config

    c = get_config("ddpm").data
    c.n_train, c.corrupt_count, c.corrupt_keep_heldout = 20, 300, 1000
    for name, value in fields.items():
        c[name] = value
    return c


def test_the_split_holds_out_neither_the_clean_nor_the_corrupted_training_images():
    from ambient_jax.data import load_source, load_split

    data = mixed_data(corrupt_kind="noise", corrupt_level=0.4, corrupt_seed=2)
    source = load_source(data)
    split = load_split(data)
    assert len(split.train) == 20 and len(split.corrupted) == 300
    assert len(split.heldout) == len(source) - 320
    assert not np.intersect1d(split.train_indices, split.corrupted_indices).size
    # each corrupted image is its source image plus its own noise of the level's std
    noise = (split.corrupted - source[split.corrupted_indices]) / 0.4
    np.testing.assert_allclose(
        noise, corrupt.image_noise(2, split.corrupted_indices, (16, 16, 1)), atol=1e-5
    )
    # the held-out images are exactly the source's others
    others = np.setdiff1d(
        np.arange(len(source)), np.r_[split.train_indices, split.corrupted_indices]
    )
    np.testing.assert_array_equal(split.heldout, source[others])
    # without corrupted images the split is as before
    plain = load_split(mixed_data(corrupt_count=0))
    assert len(plain.heldout) == len(source) - 20 and len(plain.corrupted) == 0


def test_each_annotation_gives_the_corrupted_images_their_sigma_tn(tmp_path):
    indices = np.array([3, 10, 42])
    # known: the noise's level, and the image already carries it (nothing added to make x_tn)
    sigma, clean, added = corrupt.annotation_values(mixed_data(corrupt_level=0.7), indices)
    np.testing.assert_allclose(sigma, 0.7)
    assert not clean.any() and (added == 0).all()
    sigma, clean, added = corrupt.annotation_values(mixed_data(corrupt_sigma_tn="clean"), indices)
    assert (sigma == 0).all() and clean.all() and (added == 0).all()  # used as if clean
    # a fixed value: a blurred image carries no noise, x_tn = image + sigma_tn eps_i
    sigma, clean, added = corrupt.annotation_values(
        mixed_data(corrupt_kind="blur", corrupt_sigma_tn="1.25"), indices
    )
    np.testing.assert_allclose(sigma, 1.25)
    np.testing.assert_allclose(added, 1.25)
    assert not clean.any()
    path = str(tmp_path / "annotation.json")
    data = mixed_data(corrupt_kind="blur", corrupt_level=1.0, corrupt_sigma_tn=path)
    corrupt.write_annotation(path, data, indices, [0.4, 0.9, 1.6], how="test")
    sigma, clean, added = corrupt.annotation_values(data, indices[::-1])
    np.testing.assert_allclose(sigma, [1.6, 0.9, 0.4])
    np.testing.assert_allclose(added, [1.6, 0.9, 0.4])
    assert not clean.any()
    with pytest.raises(DataError, match="no sigma_tn for 1 of the 2 corrupted images"):
        corrupt.annotation_values(data, np.array([3, 7]))
    with pytest.raises(DataError, match="do not train"):
        corrupt.annotation_values(mixed_data(corrupt_sigma_tn="unused"), indices)
    with pytest.raises(DataError, match="not additive noise"):
        corrupt.annotation_values(mixed_data(corrupt_kind="blur"), indices)
    with pytest.raises(DataError, match="does not exist"):
        corrupt.annotation_values(mixed_data(corrupt_sigma_tn=str(tmp_path / "no.json")), indices)
    for spec, says in (("0", "must be > 0"), ("sometimes", "must be 'known', 'clean'")):
        assert says in corrupt.check_sigma_tn_spec(spec, "noise")


@pytest.mark.parametrize(
    "changes, says",
    [
        ({"data.corrupt_kind": "jpeg"}, "data.corrupt_kind: must be one of"),
        ({"data.corrupt_level": 0.0}, "data.corrupt_level: must be > 0"),
        ({"data.corrupt_kind": "blur"}, "data.corrupt_sigma_tn: is 'known'"),
        ({"data.corrupt_sampling": "row_first"}, "data.corrupt_sampling: must be"),
        ({"loss.sigma_switch": 2.0}, "set loss.sigma_switch=0"),
        ({"loss.branch_rule": "lecture"}, "belongs to loss.branch_rule=paper"),
        ({"data.streaming": True}, "corrupt_count: .* needs the training images on device"),
        ({"data.corrupt_sigma_max": "-1"}, "data.corrupt_sigma_max: must be > 0 and finite"),
        ({"data.corrupt_sigma_max": "inf"}, "data.corrupt_sigma_max: must be > 0 and finite"),
        ({"data.corrupt_sigma_max": "low"}, "data.corrupt_sigma_max: must be 'none', a number"),
        ({"data.bounded_share": 1.0}, r"data.bounded_share: must be in \(0, 1\), or -1"),
        ({"data.bounded_share": 0.5}, "data.bounded_share: .* set data.corrupt_sigma_max"),
        (
            {
                "data.bounded_share": 0.5,
                "data.corrupt_sigma_max": "0.5",
                "data.corrupt_sampling": "image_first",
            },
            "data.bounded_share: .* needs data.corrupt_sampling=level_first",
        ),  # fmt: skip
        (
            {"data.corrupt_kind": "classes", "data.corrupt_sigma_tn": "clean"},
            "data.corrupt_classes: must name the other digits",
        ),
        (
            {
                "data.corrupt_kind": "classes",
                "data.corrupt_sigma_tn": "clean",
                "data.corrupt_classes": (5, 6),
            },
            r"data.classes: must name the target's digits, none of data.corrupt_classes \(5, 6\)",
        ),
        (
            {
                "data.corrupt_kind": "classes",
                "data.corrupt_sigma_tn": "clean",
                "data.corrupt_classes": (5, 6),
                "data.classes": (4, 5),
            },
            "data.classes: must name the target's digits, none of",
        ),
    ],
)
def test_mixed_quality_settings_that_cannot_work_are_named(changes, says):
    from ambient_jax import config as config_lib
    from configs.mnist import get_config

    c = get_config("ddpm")
    c.data.corrupt_count = 10
    for field, value in changes.items():
        section, name = field.split(".")
        c[section][name] = value
    with pytest.raises(ValueError, match=says):
        config_lib.check_config(c)


def test_a_corrupted_images_x_tn_carries_the_noise_it_lacks():
    """The step's x_tn: a clean image's copy at the run's level, a noised image as given (it
    carries its known level), a blurred or annotated one plus sigma_tn of its own fixed noise."""
    import jax
    import jax.numpy as jnp
    from test_training import tiny_config

    from ambient_jax.diffusion import losses
    from ambient_jax.training import train_step

    c = tiny_config()
    x0 = jnp.asarray(np.random.RandomState(0).uniform(-1, 1, (4, 16, 16, 1)), jnp.float32)
    index, rows = jnp.array([3, 50, 51, 900]), jnp.arange(4)
    sigma_tn = jnp.array([0.5, 0.7, 1.3, 2.0])
    clean = jnp.array([True, False, False, False])
    added = jnp.array([0.5, 0.0, 1.3, 2.0])
    _, x_tn, _ = train_step.prepare_rows(
        c, x0, index, rows, jax.random.key(0), sigma_tn, clean, added
    )
    eps = losses.fixed_noise(losses.noise_tn_key(c.loss), index, (16, 16, 1))
    np.testing.assert_allclose(x_tn - x0, added[:, None, None, None] * eps, atol=1e-6)


@pytest.mark.parametrize(
    "values, says",
    [
        ({"3": float("nan"), "10": 1.0, "42": 1.0}, "source index 3 is nan"),
        ({"3": 1.0, "10": float("inf"), "42": 1.0}, "source index 10 is inf"),
        ({"3": 1.0, "10": 1.0, "42": -0.5}, "source index 42 is -0.5"),
        ({"3": 0.0, "10": 1.0, "42": 1.0}, "source index 3 is 0.0"),
        ({"3": "often", "10": 1.0, "42": 1.0}, "is not an annotation file"),
        ({"3": 1.0, "10": 1.0}, "no sigma_tn for 1 of the 3 corrupted images"),  # too short
        ({"3": 1.0, "10": 1.0, "42": 1.0, "99": 2.0}, None),  # an extra image: not used
        (None, "is not an annotation file"),  # no sigma_tn key
    ],
)
def test_every_value_of_an_annotation_file_is_checked(tmp_path, values, says):
    """Before: NaN, negative or 0 values went through float() and trained (corrupted.json then
    recorded sigma_tn nan). Now each is refused naming the file, the entry and the rule."""
    import json

    path = tmp_path / "annotation.json"
    record = {"recipe": {}, "how": "hand", "extra": 1}
    if values is not None:
        record["sigma_tn"] = values
    path.write_text(json.dumps(record))
    data = mixed_data(corrupt_kind="blur", corrupt_level=1.0, corrupt_sigma_tn=str(path))
    indices = np.array([3, 10, 42])
    if says is None:
        sigma, _, _ = corrupt.annotation_values(data, indices)
        np.testing.assert_allclose(sigma, 1.0)
        return
    with pytest.raises(DataError) as error:
        corrupt.annotation_values(data, indices)
    message = str(error.value)
    assert says in message and str(path) in message and "\n" not in message, message
    if " is " in says:  # a bad value: the rule is named
        assert "must be a finite number > 0" in message


@pytest.mark.parametrize("spec", ["nan", "inf", "-1", "0"])
def test_a_fixed_annotation_must_be_finite_and_positive(spec):
    assert "must be > 0 and finite" in corrupt.check_sigma_tn_spec(spec, "blur")


def test_the_branch_boundary_by_hand():
    """losses.branch_boundary = max(sigma_switch, sigma_tn * switch_ratio + switch_offset,
    sigma_tn), for a float, a numpy array and a jax array alike; the gate at s_max = 4 is
    sqrt(4 / 3)."""
    import jax.numpy as jnp

    from ambient_jax.diffusion import losses

    assert losses.gate_ratio(4) == pytest.approx(2 / 3**0.5, rel=1e-12)
    assert losses.branch_boundary(0.5) == 0.5
    assert losses.branch_boundary(0.5, sigma_switch=0.8) == 0.8
    assert losses.branch_boundary(0.5, sigma_switch=0.3) == 0.5  # never below sigma_tn
    assert losses.branch_boundary(2.0, 0.0, 1.25, 0.05) == pytest.approx(2.55)
    assert losses.branch_boundary(2.0, 3.0, 1.25, 0.05) == 3.0
    levels = np.array([0.0, 0.4, 2.0], np.float32)
    by_hand = np.array([0.05, 0.55, 2.55], np.float32)
    np.testing.assert_allclose(losses.branch_boundary(levels, 0.0, 1.25, 0.05), by_hand)
    np.testing.assert_allclose(
        losses.branch_boundary(jnp.asarray(levels), 0.0, 1.25, 0.05), by_hand
    )


@pytest.mark.parametrize(
    "settings",
    [
        {},  # shared level: the branch starts at sigma_tn
        {"sigma_switch": 1.4},  # shared, moved up
        {"switch_ratio": 1.1547, "switch_offset": 0.05},  # shared, the group's gate
    ],
)
def test_every_caller_puts_the_branch_where_the_boundary_function_says(settings):
    """The objective's rows, the data holder's usable-from levels, the batch drawn level first and
    the tables' branch start all read losses.branch_boundary: each compared with it here, on a
    shared level (plain, sigma_switch, gated) and per image (with the gate's ratio and offset)."""
    import jax
    import jax.numpy as jnp
    import ml_collections

    from ambient_jax.diffusion import losses
    from ambient_jax.diffusion import objective as objective_lib
    from ambient_jax.training import train_step, training_data
    from configs.mnist import get_config

    x0 = jnp.zeros((4096, 4, 4, 1))
    keys = jax.random.split(jax.random.key(0), len(x0))
    denoise = lambda x, sigma: 0.5 * x
    loss = {"sigma_tn": 1.0, "sigma_switch": 0.0, "switch_ratio": 1.0, "switch_offset": 0.0}
    loss.update(settings)
    boundary = losses.branch_boundary(
        1.0, loss["sigma_switch"], loss["switch_ratio"], loss["switch_offset"]
    )
    # shared level: the objective's rows, and the branch start the tables and the split read
    shared = objective_lib.make_objective("ambient", **loss)
    _, aux = shared(denoise, x0, x0, keys)
    sigma = np.asarray(aux["sigma"])
    np.testing.assert_array_equal(aux["is_ambient"], sigma >= boundary)
    assert np.any(sigma < boundary) and np.any(sigma >= boundary)
    config_loss = ml_collections.ConfigDict(dict(get_config("ambient").loss))
    config_loss.update(loss)
    assert losses.branch_start(config_loss) == boundary
    if settings.get("sigma_switch"):
        return  # per-image sigma_tn takes no sigma_switch (data.corrupt's check)
    # per image: each row's own boundary, in the objective, the data holder and the batch
    levels = jnp.asarray(np.random.RandomState(0).choice([0.3, 0.8, 1.6], len(x0)), jnp.float32)
    clean = jnp.asarray(np.random.RandomState(1).rand(len(x0)) < 0.5)
    per_image = objective_lib.make_objective("ambient", **loss)
    _, aux = per_image(denoise, x0, x0, keys, levels, clean)
    sigma, amb = np.asarray(aux["sigma"]), np.asarray(aux["is_ambient"])
    own = np.asarray(
        losses.branch_boundary(levels, 0.0, loss["switch_ratio"], loss["switch_offset"])
    )
    np.testing.assert_array_equal(amb, sigma >= own)  # every row here has sigma_tn > 0
    assert np.all(sigma[~np.asarray(clean)] >= own[~np.asarray(clean)])
    c = get_config("ddpm")
    c.data.n_train, c.data.corrupt_count, c.data.corrupt_keep_heldout = 20, 300, 1000
    c.data.corrupt_sigma_tn = "known"
    c.data.corrupt_level = 0.4
    c.loss.switch_ratio, c.loss.switch_offset = loss["switch_ratio"], loss["switch_offset"]
    gate = (loss["switch_ratio"], loss["switch_offset"])
    held = training_data.TrainingData(c).held
    corrupted = ~held.clean
    np.testing.assert_array_equal(held.usable_from[held.clean], 0.0)
    np.testing.assert_array_equal(
        held.usable_from[corrupted],
        np.float32(losses.branch_boundary(held.sigma_tn[corrupted], 0.0, *gate)),
    )
    # a batch drawn level first: each row's image is usable at its level (clean ones always)
    row_sigma = np.exp(np.random.RandomState(2).uniform(-2, 1.5, 2048)).astype(np.float32)
    rows = train_step.gather_batch(jax.random.key(3), 0, held, 2048, jnp.asarray(row_sigma))
    row_boundary = losses.branch_boundary(np.asarray(rows.sigma_tn), 0.0, *gate)
    on_device = losses.branch_boundary(jnp.asarray(rows.sigma_tn), 0.0, *gate)  # as the loss
    np.testing.assert_array_equal(on_device, row_boundary)  # to the last bit
    assert np.all(np.where(np.asarray(rows.clean), 0.0, row_boundary) <= row_sigma)
    assert np.sum(~np.asarray(rows.clean)) > 100  # corrupted images are drawn


# ------------------------------------------------------------- other classes and window tops


def other_classes_data(**fields):
    recipe = dict(
        classes=(0, 1, 2, 3, 4), corrupt_kind="classes", corrupt_classes=(5, 6, 7, 8, 9),
        corrupt_count=300, corrupt_sigma_tn="clean",
    )  # fmt: skip
    return mixed_data(**{**recipe, **fields})


def test_other_classes_digits_train_unchanged_and_leave_the_targets_held_out_set_whole():
    from ambient_jax.data.images import to_unit_range
    from ambient_jax.data.sources import load_mnist

    split = load_split(other_classes_data())
    digits, labels = load_mnist(16)
    target, others = digits[labels < 5], digits[labels >= 5]
    assert split.num_source == len(target) == 2500
    assert len(split.train) + len(split.heldout) == 2500  # none of the 0-4 digits is lost
    # indices past the target's own count its other digits; each image as the file holds it
    assert split.corrupted_indices.min() >= 2500 and len(set(split.corrupted_indices)) == 300
    np.testing.assert_array_equal(
        split.corrupted, to_unit_range(others[split.corrupted_indices - 2500])
    )
    assert set(labels[labels >= 5][split.corrupted_indices - 2500]) == {5, 6, 7, 8, 9}
    with pytest.raises(DataError, match="corrupt_count = 2501 but the embedded digits of classes"):
        load_split(other_classes_data(corrupt_count=2501))


def test_window_tops_come_from_none_a_number_or_an_annotation_file(tmp_path):
    data = other_classes_data()
    indices = np.array([2500, 2600, 2700])
    np.testing.assert_array_equal(corrupt.window_tops(data, indices), [np.inf] * 3)
    data.corrupt_sigma_max = "0.7"
    np.testing.assert_allclose(corrupt.window_tops(data, indices), [0.7] * 3)
    path = str(tmp_path / "crops.json")
    # an image passing whole has no entry: unbounded
    corrupt.write_annotation(path, data, indices, [0.5, np.inf, 1.3], {}, key="sigma_max")
    assert json.load(open(path))["sigma_max"] == {"2500": 0.5, "2700": 1.3}
    data.corrupt_sigma_max = path
    np.testing.assert_allclose(corrupt.window_tops(data, indices), [0.5, np.inf, 1.3])
    # a sigma_tn file given as sigma_max, and a bad value: one line naming what is wrong
    corrupt.write_annotation(path, data, indices, [0.5, 0.6, 1.3], {})
    with pytest.raises(DataError, match="holds no sigma_max values .it annotates sigma_tn."):
        corrupt.window_tops(data, indices)
    json.dump({"sigma_max": {"2500": -1}}, open(path, "w"))
    with pytest.raises(DataError, match="sigma_max of source index 2500 is -1.0; every sigma_max"):
        corrupt.window_tops(data, indices)


def test_the_holder_keeps_each_images_window_and_refuses_an_empty_one():
    from configs.mnist import get_config

    c = get_config("ddpm")
    c.data = other_classes_data(corrupt_sigma_max="0.5")
    held = training_data.TrainingData(c).held
    others = held.source_index >= 2500
    np.testing.assert_array_equal(held.usable_from, 0.0)  # every image clean: from 0
    np.testing.assert_array_equal(held.usable_to[others], np.float32(0.5))
    np.testing.assert_array_equal(held.usable_to[~others], np.inf)
    c.data.corrupt_sigma_max = "none"  # no top anywhere: the holder holds none
    assert training_data.TrainingData(c).held.usable_to is None
    # a corrupted image whose top lies below its boundary would train at no level
    c.data.corrupt_sigma_tn, c.data.corrupt_sigma_max = "1.0", "0.5"
    with pytest.raises(DataError, match="source image 25.. would train at no level: its sigma_max"):
        training_data.TrainingData(c)
