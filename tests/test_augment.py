"""EDM's augmentation pipeline (ambient_jax.data.augment) pinned down by its properties, the U-Nets'
augment-label input, and augmentation inside the train step (same on any device count)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ambient_jax import nets
from ambient_jax.data import augment as aug

EVERYTHING = aug.AugmentPipe(
    xflip=1,
    yflip=1,
    rotate_int=1,
    translate_int=1,
    scale=1,
    rotate_frac=1,
    aniso=1,
    translate_frac=1,
    brightness=1,
    contrast=1,
    lumaflip=1,
    hue=1,
    saturation=1,
)


def random_images(n, size=16, channels=3, seed=0):
    return jnp.asarray(
        np.random.RandomState(seed).uniform(-1, 1, (n, size, size, channels)), jnp.float32
    )


def keys(n, seed=0):
    return jax.random.split(jax.random.key(seed), n)


def test_label_widths_follow_the_transforms_that_are_on():
    assert aug.EDM_RECIPE.label_dim == 9  # EDM's network_kwargs.augment_dim
    assert aug.EDM_COLOUR_RECIPE.label_dim == 15 and EVERYTHING.label_dim == 19


@pytest.mark.parametrize("pipe", [aug.EDM_RECIPE, EVERYTHING], ids=["edm", "everything"])
def test_probability_zero_is_the_identity_with_zero_labels(pipe):
    x = random_images(6)
    out, labels = aug.augment_batch(x, keys(6), 0.0, pipe)
    assert labels.shape == (6, pipe.label_dim) and not np.any(labels)
    np.testing.assert_allclose(out, x, atol=2e-5)  # the geometric path resamples: float rounding


def test_flips_and_quarter_turns_are_exact_pixel_copies():
    x = random_images(32)
    out, labels = aug.augment_batch(x, keys(32), 1.0, aug.AugmentPipe(xflip=1, yflip=1))
    for i in range(32):
        expect = x[i]
        expect = expect[:, ::-1] if labels[i, 0] else expect
        expect = expect[::-1] if labels[i, 1] else expect
        np.testing.assert_array_equal(out[i], expect)
    assert 0 < labels[:, 0].mean() < 1 and 0 < labels[:, 1].mean() < 1
    out, labels = aug.augment_batch(x, keys(32, 1), 1.0, aug.AugmentPipe(rotate_int=1))
    turns = np.asarray(labels[:, 0] + 2 * labels[:, 1]).astype(int)  # EDM: w=1 -> (1,0), 2 -> (1,1)
    turns = np.where(turns == 2, 3, np.where(turns == 3, 2, turns))  # w=3 -> (0,1)
    for i in range(32):
        np.testing.assert_array_equal(out[i], jnp.rot90(x[i], turns[i]))  # a pure 90-degree turn
    assert set(turns) == {0, 1, 2, 3}


def test_integer_translation_copies_pixels_with_reflected_edges():
    x = random_images(16, size=16)
    pipe = aug.AugmentPipe(translate_int=1)
    out, labels = aug.augment_batch(x, keys(16), 1.0, pipe)
    shift = np.rint(np.asarray(labels) * 16 * pipe.translate_int_max).astype(int)  # (tx, ty)
    padded = np.pad(np.asarray(x), ((0, 0), (8, 8), (8, 8), (0, 0)), mode="reflect")
    for i, (tx, ty) in enumerate(shift):
        window = padded[
            i, 8 + ty : 8 + ty + 16, 8 - tx : 8 - tx + 16
        ]  # out(x, y) = in(x - tx, y + ty)
        np.testing.assert_array_equal(out[i], window)
    assert np.abs(shift).max() == 2 and np.any(shift != 0)


def test_unit_scale_without_rotation_or_translation_returns_the_input():
    x = random_images(4)
    pipe = aug.AugmentPipe(scale=1, scale_std=0.0)  # applied (label = the draw), factor 2^0 = 1
    out, labels = aug.augment_batch(x, keys(4), 1.0, pipe)
    assert np.all(labels != 0)
    np.testing.assert_allclose(out, x, atol=2e-5)


def test_fractional_quarter_turn_of_a_smooth_image_is_rot90():
    """EDM's resampling path (pad, sym6 up, bilinear, sym6 down) turning by pi/2: rot90 up to
    the filters' interpolation error on a smooth image."""
    yy, xx = np.mgrid[0:16, 0:16] / 15.0
    x = jnp.asarray(
        np.stack([np.sin(2 * xx + 1) * np.cos(3 * yy), np.cos(2 * xx * yy)], -1), jnp.float32
    )
    out = aug._warp(x, aug._rotate2d(math.pi / 2))
    np.testing.assert_allclose(out, jnp.rot90(x, 1), atol=0.03)
    assert float(jnp.abs(out - jnp.rot90(x, 3)).max()) > 1.0


def _colour(pipe, image, n=16):
    out, labels = aug.augment_batch(
        jnp.broadcast_to(image, (n, *image.shape)), keys(n, 3), 1.0, pipe
    )
    return np.asarray(out[:, 0, 0]), np.asarray(labels)


def test_colour_transforms_match_their_closed_forms_on_constant_images():
    grey = jnp.full((4, 4, 3), 0.3)
    rgb = jnp.broadcast_to(jnp.asarray([0.5, -0.2, 0.1]), (4, 4, 3))
    out, z = _colour(aug.AugmentPipe(brightness=1), grey)
    np.testing.assert_allclose(out, (0.3 + 0.2 * z) * np.ones(3), rtol=1e-5)  # + brightness_std z
    out, z = _colour(aug.AugmentPipe(contrast=1), grey)
    np.testing.assert_allclose(out, 0.3 * 2 ** (0.5 * z) * np.ones(3), rtol=1e-5)  # x 2^(std z)
    out, z = _colour(aug.AugmentPipe(lumaflip=1), grey)
    np.testing.assert_allclose(out, np.where(z == 1, -0.3, 0.3) * np.ones(3), rtol=1e-5)
    assert 0 < z.mean() < 1
    out, z = _colour(aug.AugmentPipe(hue=1), grey)  # a turn about the grey axis keeps grey
    np.testing.assert_allclose(out, 0.3 * np.ones((16, 3)), atol=1e-6)
    out, z = _colour(aug.AugmentPipe(hue=1), rgb)
    theta = np.arctan2(z[:, 1], z[:, 0] + 1)
    axis = np.ones(3) / np.sqrt(3)
    c = np.asarray(rgb[0, 0], np.float64)
    for o, t in zip(out, theta):  # Rodrigues' rotation of the colour about the grey axis
        expect = (
            c * np.cos(t) + np.cross(axis, c) * np.sin(t) + axis * axis.dot(c) * (1 - np.cos(t))
        )
        np.testing.assert_allclose(o, expect, atol=1e-5)
    out, z = _colour(aug.AugmentPipe(saturation=1), rgb)
    mean = float(np.mean(c))
    np.testing.assert_allclose(out, mean + (c - mean) * 2.0**z, atol=1e-5)  # x 2^(saturation_std z)
    out, z = _colour(aug.AugmentPipe(brightness=1, contrast=1), jnp.full((4, 4, 1), 0.3))
    np.testing.assert_allclose(out[:, 0], 2 ** (0.5 * z[:, 1]) * (0.3 + 0.2 * z[:, 0]), rtol=1e-5)


def test_each_label_has_the_mean_and_spread_of_its_distribution():
    """EDM's recipe at p = 0.5 over 20,000 draws: each transform fires with probability
    multiplier * p, then draws from its documented distribution."""
    n, p = 20_000, 0.5
    _, labels = aug.augment_batch(jnp.zeros((n, 4, 4, 1)), keys(n, 7), p, aug.EDM_RECIPE)
    labels = np.asarray(labels)
    xflip, yflip, scale, rot_cos, rot_sin, an_cos, an_sin, tx, ty = labels.T
    assert abs(xflip.mean() - 0.5) < 0.015  # multiplier 1e8: a fair coin on every image
    assert abs(yflip.mean() - p * 0.5) < 0.015
    for z in (scale, tx, ty):  # N(0, 1) with probability p, else 0
        assert abs(z.mean()) < 0.03 and abs(z.var() - p) < 0.03 and abs((z != 0).mean() - p) < 0.015
    # angle U(-pi, pi) with probability p: E[cos - 1] = -p, E[sin] = 0, E[sin^2] = p / 2
    assert abs(rot_cos.mean() + p) < 0.02 and abs(rot_sin.mean()) < 0.02
    assert abs((rot_sin**2).mean() - p / 2) < 0.015
    # z cos r, z sin r: z ~ N(0, 1) with prob. p; r ~ U(-pi, pi) with prob. 0.5, else 0
    assert abs((an_cos**2).mean() - p * 0.75) < 0.03 and abs((an_sin**2).mean() - p * 0.25) < 0.02


def test_labels_are_zero_exactly_when_nothing_was_applied():
    x = random_images(64, size=8)
    out, labels = aug.augment_batch(x, keys(64, 5), 0.15, aug.EDM_RECIPE)
    changed = np.asarray(jnp.abs(out - x).max(axis=(1, 2, 3))) > 1e-3
    nothing = ~np.any(np.asarray(labels) != 0, axis=1)
    assert nothing.any() and (~nothing).any()
    np.testing.assert_array_equal(changed, ~nothing)


def test_augment_input_parameter_counts_match_edm():
    def count(preset, augment_dim, size):
        model = nets.build_model(preset, 3, augment_dim=augment_dim)
        tree = jax.eval_shape(lambda: nets.init_params(model, (size, size, 3), jax.random.key(0)))
        return sum(leaf.size for leaf in jax.tree_util.tree_leaves(tree)), tree

    with_aug, tree = count("ncsnpp_ffhq64", 9, 64)
    assert with_aug == 62_761_091  # the paper's FFHQ-64 network with augmentation
    plain, plain_tree = count("ddpmpp_cifar10", 0, 32)
    assert plain == 55_732_739 and count("ddpmpp_cifar10", 9, 32)[0] - plain == 1_152
    assert "map_augment" in tree["params"] and "map_augment" not in plain_tree["params"]


def test_zero_labels_are_the_samplers_input_and_the_labels_steer_the_network():
    model = nets.build_model("tiny", 1, augment_dim=9)
    x, c = random_images(2, channels=1), jnp.zeros((2,))
    params = nets.init_params(model, (16, 16, 1), jax.random.key(0))
    plain = model.apply(params, x, c)
    np.testing.assert_array_equal(
        plain, model.apply(params, x, c, augment_labels=jnp.zeros((2, 9)))
    )

    # the labels reach the output: map_augment gets a gradient from them, none from zero labels
    def grad_of_map_augment(labels):
        out = lambda p: jnp.sum(model.apply(p, x, c, augment_labels=labels) ** 2)
        return jax.grad(out)(params)["params"]["map_augment"]["kernel"]

    assert not np.any(grad_of_map_augment(jnp.zeros((2, 9))))
    assert np.all(np.abs(grad_of_map_augment(jnp.ones((2, 9)))).sum(axis=1) > 0)


def test_augmented_training_is_the_same_on_one_and_eight_devices():
    from test_parallel import run_steps

    changes = {"data.augment_p": 0.5, "model.preset": "tiny"}
    one, one_params = run_steps("jit", 1, changes=changes)
    eight, eight_params = run_steps("jit", 8, changes=changes)
    np.testing.assert_allclose(eight, one, rtol=2e-5, atol=1e-6)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
        eight_params,
        one_params,
    )


def test_the_step_augments_each_image_and_its_noisy_copy_by_one_transform():
    """train_step.prepare_rows: the copy is made from the stored image, then both go through
    the same draw: the copy minus the image is the augmented noise (the geometric part is
    linear), rows with zero labels are untouched, and the labels are the pipeline's for those
    keys."""
    from test_training import tiny_config

    from ambient_jax.diffusion import losses
    from ambient_jax.training import train_step

    c = tiny_config(**{"data.augment_p": 0.1, "loss.sigma_tn": 0.5})
    x0 = random_images(16, channels=1)
    index, rows, step_key = jnp.arange(300, 316), jnp.arange(16), jax.random.key(11)
    out, x_tn, cond = jax.jit(lambda x: train_step.prepare_rows(c, x, index, rows, step_key))(x0)
    keys = jax.vmap(
        lambda b: jax.random.fold_in(jax.random.fold_in(step_key, train_step.STEP_AUGMENT), b)
    )(rows)
    expect, labels = aug.augment_batch(x0, keys, 0.1, aug.EDM_RECIPE)
    np.testing.assert_allclose(out, expect, atol=1e-5)
    np.testing.assert_array_equal(cond["augment_labels"], labels)
    noise = losses.noisy_training_copies(c.loss, x0, index) - x0
    np.testing.assert_allclose(
        x_tn - out, aug.augment_batch(noise, keys, 0.1, aug.EDM_RECIPE)[0], atol=1e-5
    )
    untouched = ~np.any(np.asarray(labels) != 0, axis=1)
    assert untouched.any() and (~untouched).any()
    np.testing.assert_allclose(np.asarray(out)[untouched], np.asarray(x0)[untouched], atol=2e-5)


@pytest.mark.parametrize("kind", ["scale", "rotate_frac", "translate_frac"])
def test_geometric_transforms_move_pixels_as_their_labels_say(kind):
    """output(u) = input(G_inv u) about the image centre (x across, y down), with G_inv built
    from the labels alone: scale 2^(0.2 z) shrinks coordinates by s, rotate_frac turns them by
    theta, translate_frac shifts them back by z * size / 8. Checked against scipy's bilinear
    resampling of a smooth image, away from the borders."""
    from scipy import ndimage

    size = 32
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)

    def smooth(x, y):
        return np.sin(2 * np.pi * x / 40 + 0.3) * np.cos(2 * np.pi * y / 50 - 0.2)

    image = smooth(xx, yy)[..., None].astype(np.float32)
    pipe = aug.AugmentPipe(**{kind: 1})
    out, labels = aug.augment_batch(
        jnp.broadcast_to(image, (12, size, size, 1)), keys(12, 4), 1.0, pipe
    )
    c = (size - 1) / 2
    for o, lab in zip(np.asarray(out), np.asarray(labels)):
        u, v = xx - c, yy - c
        if kind == "scale":
            s = 2 ** (0.2 * lab[0])
            src_x, src_y = u / s, v / s
        elif kind == "rotate_frac":
            theta = np.arctan2(lab[1], lab[0] + 1)
            src_x = np.cos(theta) * u - np.sin(theta) * v
            src_y = np.sin(theta) * u + np.cos(theta) * v
        else:
            src_x, src_y = u - lab[0] * size * 0.125, v - lab[1] * size * 0.125
        expect = ndimage.map_coordinates(
            image[..., 0], [src_y + c, src_x + c], order=1, mode="mirror"
        )
        inner = (slice(8, -8), slice(8, -8))
        np.testing.assert_allclose(o[..., 0][inner], expect[inner], atol=0.03)
    assert np.abs(labels).max() > 0.3
