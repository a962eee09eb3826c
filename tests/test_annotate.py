"""Classifier annotation of corrupted images: the rule that reads a level off the classifier's
curve, a classifier that ranks stronger corruptions higher, and the file a training run reads."""

import json

import numpy as np
from test_training import cli, tiny_config

from ambient_jax.data import annotate, corrupt, crops, load_split
from ambient_jax.eval import locality
from ambient_jax.training import train


def test_the_level_is_the_lowest_from_which_the_curve_stays_within_epsilon():
    grid = np.array([0.1, 0.2, 0.4, 0.8, 1.6])
    p = np.array(
        [
            [1.0, 0.9, 0.54, 0.7, 0.5],  # a dip at 0.4 that does not last: 1.6
            [1.0, 0.8, 0.55, 0.52, 0.49],  # within 0.05 of 1/2 from 0.4 on
            [0.5, 0.5, 0.5, 0.5, 0.5],  # never tellable: the lowest level
            [1.0, 1.0, 1.0, 1.0, 0.9],  # always tellable: the top level
        ]
    )
    np.testing.assert_array_equal(
        annotate.lowest_confused_level(p, grid, epsilon=0.05, window=1), [1.6, 0.4, 0.1, 1.6]
    )
    # a moving average of 3 (edges averaged over 2): row 1 becomes
    # [0.9, 0.783, 0.69, 0.52, 0.505] -> 0.8; row 0 [0.95, 0.813, 0.713, 0.58, 0.6] -> never, 1.6
    np.testing.assert_allclose(
        annotate.lowest_confused_level(p, grid, epsilon=0.05, window=3), [1.6, 0.8, 0.1, 1.6]
    )
    # measured against what clean images get at each level where that is above 1/2 (0.7 at 0.8,
    # 0.6 at 1.6): row 0's 0.7 at 0.8 is then within 0.05, so it is confused from 0.4 on
    clean = np.array([0.0, 0.1, 0.3, 0.7, 0.6])
    np.testing.assert_array_equal(
        annotate.lowest_confused_level(p, grid, 0.05, 1, np.maximum(0.5, clean)),
        [0.4, 0.4, 0.1, 1.6],
    )


def test_the_classifier_annotates_stronger_noise_higher():
    """Digits noised with std 0.1 and 0.8 among the corrupted ones: the classifier puts the
    strong ones higher, and not below their std (the conservative side of the known value)."""
    digits = load_split(tiny_config().data).heldout[:160]
    images = digits[:80]
    noise = corrupt.image_noise(7, np.arange(80), images.shape[1:])
    level = np.where(np.arange(80) < 40, 0.1, 0.8).astype(np.float32)
    corrupted = images + level[:, None, None, None] * noise
    recipe = annotate.Recipe(
        steps=300, batch_size=128, num_levels=16, sigma_min=0.05, sigma_max=10.0
    )
    sigma_tn, summary = annotate.annotate(digits[80:], corrupted, recipe, log=lambda _: None)
    weak, strong = np.median(sigma_tn[:40]), np.median(sigma_tn[40:])
    assert 0.1 <= weak < 0.3 and strong >= 0.8 and strong > 3 * weak, (weak, strong)
    # told apart at the lowest level, not at the highest
    assert summary["mean_p_corrupted"][0] > summary["mean_p_clean"][0] + 0.3
    assert abs(summary["mean_p_corrupted"][-1] - summary["mean_p_clean"][-1]) < 0.05


def test_ambient_annotate_writes_the_file_a_run_trains_on(tmp_path):
    out = str(tmp_path / "fixed.json")
    recipe = [
        "--config.data.n_train=16",
        "--config.data.corrupt_count=24",
        "--config.data.corrupt_kind=blur",
        "--config.data.corrupt_level=0.8",
    ]
    done = cli("annotate", *recipe, "--fixed=1.3", f"--out={out}")
    assert done.returncode == 0, done.stderr
    assert "sigma_tn of 24 images, median 1.3" in done.stdout
    c = tiny_config(**{"train.num_steps": 2, "loss.objective": "ddpm"})
    for flag in recipe:
        field, value = flag[len("--config.data.") :].split("=")
        c.data[field] = type(c.data[field])(value)
    c.data.corrupt_sigma_tn = out
    workdir, logs = str(tmp_path / "run"), []
    train.train(c, workdir, log=logs.append)
    assert (
        "data of mixed quality: 16 clean and 24 corrupted images (blur 0.8), the corrupted at "
        f"sigma_tn 1.3 (median; {out}), batches drawn level_first" in logs
    ), logs
    record = json.load(open(f"{workdir}/corrupted.json"))
    assert record["sigma_tn"] == [1.3] * 24 and not any(record["used_as_clean"])
    assert record["noise_added_to_make_x_tn"] == [1.3] * 24  # a blurred image carries none
    written = json.load(open(out))
    assert sorted(map(int, written["sigma_tn"])) == record["source_indices"]
    assert written["recipe"] == record["recipe"]
    # a config without corrupted images: one line, exit 2
    refused = cli("annotate", f"--out={out}")
    assert refused.returncode == 2 and "has no corrupted images" in refused.stderr


# ------------------------------------------------------------------ sigma_max: the crops annotation


def test_an_image_passes_up_to_the_largest_size_it_passes_at_along_with_every_smaller_one():
    sizes, bars = (4, 8, 16), np.array([0.5, 0.4, 0.3])
    p_other = np.array(
        [
            [0.4, 0.3, 0.2],  # passes everywhere: 16 (the whole image)
            [0.4, 0.3, 0.9],  # fails whole: 8
            [0.4, 0.5, 0.1],  # fails at 8, passes whole: 4 (not a gap's far side)
            [0.6, 0.1, 0.1],  # fails at the smallest: 0
        ]
    )
    np.testing.assert_array_equal(crops.passing_size(p_other, sizes, bars), [16, 8, 4, 0])


def test_the_map_gives_each_crop_size_the_largest_level_below_its_first_global_one():
    sigmas = np.array([0.1, 0.3, 1.0, 3.0])
    globality = {4: [0.0, 0.05, 0.2, 0.1], 8: [0.0, 0.0, 0.05, 0.3], 12: [0.2] * 4, 16: [0.0] * 4}
    # 4: global from 1.0 (a later dip does not count); 8: from 3.0; 12: already at the lowest;
    # 16, the whole image: unbounded
    assert locality.crop_levels(globality, sigmas, side=16, tau=0.1) == {
        4: 0.3, 8: 1.0, 12: 0.0, 16: float("inf")
    }  # fmt: skip
    assert locality.crop_levels({8: [0.0] * 4}, sigmas, side=16)[8] == 3.0  # local throughout


def test_the_gaussian_denoiser_is_the_closed_form_and_independent_pixels_are_local():
    """Pixels drawn independently with their own variances: the fitted Gaussian's denoiser is
    mu + v / (v + sigma^2) (x - mu) per pixel, and no pixel outside any window moves the centre
    (G_w = 0 at every level and size, so every size gets the grid's top)."""
    rng = np.random.RandomState(0)
    std = rng.uniform(0.2, 1.0, (8, 8, 1))
    images = (0.3 + std * rng.randn(4000, 8, 8, 1)).astype(np.float32)
    denoise = locality.gaussian_denoiser(images, ridge=0.0)
    x, sigma = rng.randn(5, 8, 8, 1).astype(np.float32), np.full(5, 0.7, np.float32)
    mean, var = images.mean(axis=0), images.var(axis=0, ddof=1)
    cov = np.cov(images.reshape(4000, -1), rowvar=False)
    centred = (x - mean).reshape(5, -1).T
    expected = mean + (cov @ np.linalg.solve(cov + 0.49 * np.eye(64), centred)).T.reshape(x.shape)
    np.testing.assert_allclose(denoise(x, sigma), expected, rtol=1e-4, atol=1e-4)
    assert np.allclose(np.diag(cov), var.ravel())  # the fit is the sample covariance
    sigmas = np.array([0.1, 1.0, 10.0])
    independent = locality.gaussian_denoiser(images)  # off-diagonal sample noise only
    g = locality.window_globality(independent, images[:64], (4, 6), sigmas)
    assert max(max(v) for v in g.values()) < 0.02, g


def test_the_crops_classifier_passes_target_digits_at_larger_crops_than_other_digits():
    """Trained on 100 digits of 0-4 and 400 of 5-9, the crops classifiers pass held-out digits of
    0-4 at larger crop sizes than the 5-9 digits (measured: mean size 6.1 against 2.9; a held-out
    0-4 digit passes at a larger size than a 5-9 one in far more pairs than the reverse), and
    more of them whole."""
    from test_corrupt import other_classes_data

    split = load_split(other_classes_data(corrupt_count=400))
    recipe = crops.CropRecipe(sizes=(4, 8, 16), steps=300, batch_size=128)
    levels = {4: 0.3, 8: 1.0, 16: float("inf")}
    sigma_max, summary, params = crops.annotate(
        split.train, split.corrupted, levels, recipe, log=lambda _: None
    )
    heldout = split.heldout[:200]
    bars = np.array([summary["bars"][str(w)] for w in recipe.sizes])
    scores = np.stack(
        [crops.other_probability(p, heldout, w, recipe) for p, w in zip(params, recipe.sizes)], 1
    )
    target_size = crops.passing_size(scores, recipe.sizes, bars)
    other_size = np.array([{0.002: 0, 0.3: 4, 1.0: 8}.get(float(s), 16) for s in sigma_max])
    assert np.mean(target_size) > np.mean(other_size) + 2, (target_size, other_size)
    ranked = np.mean(np.sign(target_size[:, None] - other_size[None, :]))
    assert ranked > 0.3, ranked  # P(target larger) - P(other larger) over all pairs
    assert np.mean(target_size == 16) > np.mean(other_size == 16)
    assert summary["passing_size_counts"]["16"] == np.sum(other_size == 16)


def test_ambient_annotate_writes_sigma_max_a_run_trains_on(tmp_path):
    """--annotate=sigma_max on other classes' digits: the map measured from the Gaussian's
    locality, the file, and a run that reads it and keeps those digits below their tops."""
    out = str(tmp_path / "crops.json")
    recipe = [
        "--config.data.n_train=16",
        "--config.data.classes=(0,1,2,3,4)",
        "--config.data.corrupt_kind=classes",
        "--config.data.corrupt_classes=(5,6,7,8,9)",
        "--config.data.corrupt_count=24",
    ]
    done = cli(
        "annotate", *recipe, "--annotate=sigma_max", "--crop_sizes=4,8,16", "--crop_steps=20",
        f"--out={out}",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "crop size -> sigma_max (4: " in done.stdout and ", 16: inf)" in done.stdout
    assert "from the locality of gaussian (G_w <= 0.1)" in done.stdout
    written = json.load(open(out))
    assert set(written["how"]["map"]["globality"]) == {"4", "8", "16"}
    assert set(map(int, written["sigma_max"])) <= set(range(2500, 5000))
    c = tiny_config(**{"train.num_steps": 2, "loss.objective": "ddpm"})
    c.data.n_train, c.data.classes, c.data.corrupt_kind = 16, (0, 1, 2, 3, 4), "classes"
    c.data.corrupt_classes, c.data.corrupt_count = (5, 6, 7, 8, 9), 24
    c.data.corrupt_sigma_tn, c.data.corrupt_sigma_max = "clean", out
    workdir, logs = str(tmp_path / "run"), []
    train.train(c, workdir, log=logs.append)
    line = next(m for m in logs if m.startswith("data of mixed quality"))
    assert "16 clean and 24 other images (digits of classes (5, 6, 7, 8, 9))" in line, line
    record = json.load(open(f"{workdir}/corrupted.json"))
    tops = {str(i): s for i, s in zip(record["source_indices"], record["sigma_max"])}
    assert all(tops[i] == v for i, v in written["sigma_max"].items())
    assert all(v is None for i, v in tops.items() if i not in written["sigma_max"])
