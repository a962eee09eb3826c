"""The per-noise-level diagnosis: its closed forms checked from their definitions."""

import jax
import jax.numpy as jnp
import numpy as np
from conftest import empirical_denoiser, gaussian_denoiser

from ambient_jax.diffusion import losses
from ambient_jax.eval import diagnose

SHAPE = (4, 4, 1)


def test_sigma_grid_is_log_spaced_over_the_sampler_range():
    s = diagnose.sigma_grid(24, 0.002, 80.0)
    assert len(s) == 24 and np.isclose(s[0], 0.002) and np.isclose(s[-1], 80.0)
    np.testing.assert_allclose(np.diff(np.log(s)), np.log(80 / 0.002) / 23, rtol=1e-6)


def test_blocked_posterior_mean_equals_unblocked_and_the_definition(key):
    refs = jax.random.normal(key, (37, *SHAPE))  # 37: the last block of 8 is padded
    x = 2.0 * jax.random.normal(jax.random.key(1), (5, *SHAPE))
    var = jnp.array([0.01, 0.3, 1.0, 4.0, 100.0])
    whole = diagnose.posterior_mean(x, refs, var)
    blocked = diagnose.posterior_mean(x, refs, var, ref_block=8)
    np.testing.assert_allclose(blocked, whole, rtol=1e-5, atol=1e-6)
    # from the definition, in float64 numpy
    xf, rf = np.asarray(x, np.float64).reshape(5, -1), np.asarray(refs, np.float64).reshape(37, -1)
    logits = -((xf[:, None] - rf[None]) ** 2).sum(-1) / (2 * np.asarray(var, np.float64)[:, None])
    w = np.exp(logits - logits.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    np.testing.assert_allclose(np.asarray(blocked).reshape(5, -1), w @ rf, rtol=1e-4, atol=1e-5)


def test_memorizing_denoiser_is_the_empirical_optimum_and_its_distance_is_zero(key):
    train = jax.random.normal(key, (12, *SHAPE))
    heldout = jax.random.normal(jax.random.key(5), (9, *SHAPE))
    sigmas = diagnose.sigma_grid(6, 0.01, 10.0)
    reference = empirical_denoiser(train)
    x, s = heldout + 0.7, jnp.full((9,), 0.7)
    np.testing.assert_allclose(
        diagnose.memorizing_denoiser(train)(x, s), reference(x, s), rtol=1e-5, atol=1e-6
    )
    out = diagnose.diagnose(
        diagnose.memorizing_denoiser(train, ref_block=5), train, heldout, sigmas, key
    )
    np.testing.assert_allclose(out["dist_memorizing"], 0.0, atol=1e-10)
    # D*_S copies: at low noise it returns training images exactly (error 0 on S) but not held-out
    # ones
    assert out["err_train"][0] < 1e-6 and out["gap"][0] > 0.1


def test_error_on_gaussian_data_matches_the_closed_form(key):
    """x0 ~ N(mu, c^2 I), D = the Gaussian posterior mean: per-pixel error c^2 sigma^2 / (c^2 +
    sigma^2)."""
    mu, c = 0.2, 0.6
    images = mu + c * jax.random.normal(key, (4000, *SHAPE))
    sigmas = np.array([0.05, 0.3, 0.6, 2.0, 20.0])
    err, _ = diagnose.denoising_errors(
        gaussian_denoiser(mu, c), images, sigmas, jax.random.key(9), batch_size=1000
    )
    closed = c**2 * sigmas**2 / (c**2 + sigmas**2)
    np.testing.assert_allclose(err, closed, rtol=0.03)
    # and the identity map's error is sigma^2, so a wrong formula (or wrong noise scale) shows
    ident, _ = diagnose.denoising_errors(
        lambda x, s: x, images, sigmas, jax.random.key(9), batch_size=1000
    )
    np.testing.assert_allclose(ident, sigmas**2, rtol=0.03)


def test_noisy_copy_optimum_minimises_the_ambient_loss_over_the_copies(key):
    """D*_tn is the exact minimiser of ambient_loss over S_tn: its loss beats any perturbation."""
    sigma_tn = 0.5
    x0 = jax.random.normal(key, (6, *SHAPE))
    copies = losses.noisy_copy(x0, jnp.arange(6), sigma_tn, jax.random.key(2))
    best = diagnose.noisy_copy_denoiser(copies, sigma_tn, ref_block=4)
    b = 20000
    k1, k2, k3 = jax.random.split(jax.random.key(3), 3)
    target = copies[jax.random.randint(k1, (b,), 0, 6)]
    sigma = jnp.exp(jax.random.uniform(k2, (b,), minval=jnp.log(0.6), maxval=jnp.log(5.0)))
    noise = jax.random.normal(k3, target.shape)
    loss = lambda d: float(jnp.mean(losses.ambient_loss(d, target, sigma, sigma_tn, noise)))
    best_loss = loss(best)
    for i, v in enumerate(jax.random.normal(jax.random.key(4), (3, *SHAPE))):
        assert best_loss < loss(lambda x, s, v=v: best(x, s) + 0.05 * v), (
            f"perturbation {i} beat D*_tn"
        )
    # its distance to itself is zero, and it is defined above sigma_tn only
    out = diagnose.diagnose(
        best, x0, x0 + 0.1, np.array([0.3, 0.8, 2.0]), key, noisy_copies=copies, sigma_tn=sigma_tn
    )
    assert out["dist_noisy_copies"][0] is None
    np.testing.assert_allclose(out["dist_noisy_copies"][1:], 0.0, atol=1e-10)


def test_noisy_copy_optimum_with_one_copy_by_hand():
    """With one noisy copy y the posterior mean is y, so D*_tn = (sigma^2 y - sigma_tn^2 x) /
    (sigma^2 - sigma_tn^2):
    y = 1, x = 2, sigma = 1, sigma_tn = 0.5 gives (1 - 0.5) / 0.75 = 2/3 in every pixel."""
    y = jnp.ones((1, 4, 4, 1))
    best = diagnose.noisy_copy_denoiser(y, 0.5)
    np.testing.assert_allclose(best(2.0 * y, jnp.array([1.0])), 2.0 / 3.0, rtol=1e-6)


def test_tracker_gap_is_heldout_minus_train_error_and_extraction_is_counted(tmp_path):
    """The tracking record from its definition: per-pixel denoising errors at each tracked level
    on the tracker's fixed images and noise, held-out minus train; extraction of its samples."""
    import functools
    import sys

    from ambient_jax import parallel
    from ambient_jax.data import load_split
    from ambient_jax.diffusion import generate
    from ambient_jax.diffusion.precond import edm_denoiser
    from ambient_jax.training import tracking, train_state

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parents[1]))
    from configs.mnist import get_config

    c = get_config("ambient")
    c.model.overrides.width, c.model.overrides.num_blocks, c.model.overrides.emb_channels = (
        32,
        1,
        16,
    )
    c.data.n_train, c.sample.num_steps, c.train.track_samples, c.eval.carlini_k = 16, 2, 8, 5
    c.train.track_sigmas = (0.3, 2.0)
    split = load_split(c.data)
    model = train_state.network(c, 1)
    params = train_state.init_state(c, model, __import__("optax").identity()).ema_params
    mesh = parallel.make_mesh(c.parallel)
    tracker = tracking.Tracker(
        c, model, split.train, split.heldout, generate.make_sample_fn(c, model, mesh), mesh
    )
    record = tracker(params, 0)
    denoise = edm_denoiser(functools.partial(model.apply, params, train=False), c.loss.sigma_data)
    for sigma in (0.3, 2.0):
        err = {}
        for name, x0 in tracker.images.items():
            d = denoise(x0 + sigma * tracker.noise[name], jnp.full((x0.shape[0],), sigma))
            err[name] = float(jnp.mean((d - x0) ** 2))
        np.testing.assert_allclose(
            record[f"track_gap_sigma{sigma:g}"], err["heldout"] - err["train"], rtol=1e-4, atol=1e-7
        )
    assert len(tracker.images["heldout"]) == min(tracking.TRACK_IMAGES, len(split.heldout))
    assert (
        0.0 <= record["track_extraction"] <= 100.0
        and 0.0 <= record["track_robust_extraction"] <= 100.0
    )
    # The shares by definition: training images copy themselves (distance 0, similarity 1).
    assert tracker._copy_shares(split.train) == {
        "track_extraction": 100.0,
        "track_s95": 100.0,
        "track_robust_extraction": 100.0,
        "track_robust_s95": 100.0,
    }
    assert {k: record[k] for k in tracker.heldout_shares} == tracker.heldout_shares
    assert tracker.heldout_shares["track_heldout_s95"] < 100.0
    # the same parameters give the same record (fixed images, noise and latents)
    again = tracker(params, 10)
    assert {k: v for k, v in again.items() if k != "track_seconds"} == {
        k: v for k, v in record.items() if k != "track_seconds"
    }


def test_effective_references_from_the_definition_and_its_limits(key):
    refs = jax.random.normal(key, (23, *SHAPE))
    x = jax.random.normal(jax.random.key(1), (4, *SHAPE))
    var = jnp.array([0.5, 2.0, 10.0, 1e6])
    got = diagnose.effective_references(x, refs, var, ref_block=5)
    xf, rf = np.asarray(x, np.float64).reshape(4, -1), np.asarray(refs, np.float64).reshape(23, -1)
    lg = -((xf[:, None] - rf[None]) ** 2).sum(-1) / (2 * np.asarray(var, np.float64)[:, None])
    w = np.exp(lg - lg.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    np.testing.assert_allclose(got, 1 / (w**2).sum(1), rtol=1e-4)
    assert abs(float(got[-1]) - 23) < 0.01  # all references weigh the same at huge variance
    at_ref = diagnose.effective_references(refs[:3], refs, jnp.full((3,), 1e-3))
    np.testing.assert_allclose(
        at_ref, 1.0, rtol=1e-6
    )  # an input on a reference at tiny variance: one


def test_globality_is_zero_for_local_denoisers_and_follows_its_definition_for_a_global_one():
    """G(sigma) = E ||D(c)_P - D(x_a)_P||^2 / E ||D(x_b)_P - D(x_a)_P||^2, c = x_a near P, x_b
    beyond: 0 for a pixelwise (Gaussian data's exact denoiser) and a 5x5 denoiser (the margin is
    2 at 16x16); for D = the image mean everywhere, the share of the pair's mean difference that
    lies beyond the margin; near 1 for the exact denoiser of a few images at low noise."""
    patch, window = diagnose._window_mask((16, 16, 1), 4, 2)
    rows, cols = np.nonzero(patch[..., 0])
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (6, 9, 6, 9)
    rows, cols = np.nonzero(window[..., 0])
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (4, 11, 4, 11)

    images = np.asarray(jax.random.normal(jax.random.key(3), (12, 16, 16, 1)))
    sigmas = np.array([0.05, 1.0, 20.0])
    key = jax.random.key(4)
    pixelwise = gaussian_denoiser(0.1, 0.7)
    blur = lambda x, s: jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 5, 5, 1), (1,) * 4, "SAME")
    # Zero up to rounding: XLA may fuse the chimera's selection into D's arithmetic.
    for local in (pixelwise, blur):
        np.testing.assert_allclose(
            diagnose.globality(local, images, sigmas, key, batch_size=5), 0.0, atol=1e-12
        )

    mean = lambda x, s: jnp.broadcast_to(x.mean(axis=(1, 2, 3), keepdims=True), x.shape)
    got = diagnose.globality(mean, images, sigmas, key, batch_size=5)
    for level, sigma in enumerate(sigmas):
        level_key = jax.random.fold_in(key, level)
        noise = np.stack(
            [jax.random.normal(jax.random.fold_in(level_key, j), (16, 16, 1)) for j in range(12)]
        )
        x = images + sigma * noise
        diff = np.roll(x, -1, axis=0) - x
        far = (diff * ~window).sum(axis=(1, 2, 3)) / 256
        whole = diff.sum(axis=(1, 2, 3)) / 256
        np.testing.assert_allclose(got[level], np.sum(far**2) / np.sum(whole**2), rtol=1e-4)
    # Copying is global: the exact denoiser of 6 of the images snaps the chimera (three quarters
    # x_b) to x_b's training image, not x_a's.
    copying = diagnose.globality(
        empirical_denoiser(jnp.asarray(images[:6])), images[:6], [1e-3], key
    )
    assert copying[0] > 0.9


def test_the_run_diagnosis_compares_training_images_with_held_out_ones(tmp_path, monkeypatch):
    """diagnose_run on a run whose denoiser is the exact memorizer of its training images: on
    them its error is about 0 at low noise, on the held-out images (never trained on) it is not,
    so the gap is positive there, and the memorizer's distance to D*_S is 0 everywhere. Fed the
    training images as its held-out ones, the diagnosis would show no gap."""
    import jax.numpy as jnp

    from ambient_jax import config as config_lib
    from ambient_jax.data.subset import load_split, record_subset

    config = config_lib.complete(config_lib.base_config())
    config.data.n_train, config.loss.objective = 16, "ddpm"
    split = load_split(config.data)
    config_lib.save_config(str(tmp_path), config)
    record_subset(str(tmp_path), config.data, split.train_indices,
                  len(split.train) + len(split.heldout))  # fmt: skip
    monkeypatch.setattr(diagnose.checkpoint, "load_ema_params", lambda wd: (config, None, None))
    exact = diagnose.memorizing_denoiser(jnp.asarray(split.train))
    monkeypatch.setattr(diagnose, "network_denoiser", lambda *_: exact)
    result = diagnose.diagnose_run(str(tmp_path), num_levels=4, max_images=16, log=lambda _: None)
    low = 0  # sigma 0.002
    assert result["num_train"] == 16 and result["num_heldout"] == 16
    assert result["err_train"][low] < 1e-4 < 0.01 < result["err_heldout"][low]
    assert result["gap"][low] > 0.01 and max(result["dist_memorizing"]) < 1e-6
