"""Formulas pinned one by one, each against a value computed by hand or from its definition (the
mutation harness, benchmarks/mutation.py, checks that a change to any of them fails a test)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import nonlinear_denoiser
from test_training import tiny_config

from ambient_jax import parallel
from ambient_jax.diffusion import generate, losses, sampling, schedules
from ambient_jax.diffusion import objective as objective_lib
from ambient_jax.eval import fid, inception, memorization
from ambient_jax.theory import label_memorization
from ambient_jax.training import train_state, train_step

IMAGE = (4, 4, 1)


def test_denoising_loss_is_the_edm_weight_times_the_squared_error_by_hand(key):
    x0 = jax.random.normal(key, (6, *IMAGE))
    noise = jax.random.normal(jax.random.key(1), x0.shape)
    sigma = jnp.array([0.01, 0.1, 0.5, 1.0, 3.0, 40.0])
    denoise = nonlinear_denoiser(jax.random.key(2), IMAGE)
    got = losses.denoising_loss(denoise, x0, sigma, noise)
    s = np.asarray(sigma, np.float64)
    d = np.asarray(denoise(x0 + sigma[:, None, None, None] * noise, sigma), np.float64)
    lam = (s**2 + 0.25) / (s * 0.5) ** 2
    np.testing.assert_allclose(
        got, lam * ((d - np.asarray(x0, np.float64)) ** 2).sum(axis=(1, 2, 3)), rtol=1e-5
    )


def test_training_noise_levels_are_log_normal_with_the_configured_mean_and_spread():
    b = 8192
    objective = objective_lib.make_objective("ddpm", p_mean=-1.2, p_std=1.2)
    x0 = jnp.zeros((b, *IMAGE))
    _, aux = objective(lambda x, s: x, x0, None, jax.random.split(jax.random.key(3), b))
    log_sigma = np.log(np.asarray(aux["sigma"]))
    assert abs(log_sigma.mean() + 1.2) < 0.04 and abs(log_sigma.std() - 1.2) < 0.04


def test_vp_noise_level_of_time_by_hand():
    t = np.array([1e-3, 0.1, 0.5, 1.0])
    expected = np.sqrt(1 - np.exp(-(19.9 * t**2 / 2 + 0.1 * t)))
    np.testing.assert_allclose(schedules.vp_s_of_t(jnp.asarray(t)), expected, rtol=1e-5)


def test_stochastic_edm_sampler_follows_algorithm_2_by_hand():
    """Two churned Heun steps with D = 0.5 x, against Karras et al.'s Algorithm 2 written out."""
    latents = jax.random.normal(jax.random.key(4), (3, *IMAGE))
    key, n, s_churn = jax.random.key(5), 2, 0.5
    denoise = lambda x, s: 0.5 * x
    got = sampling.edm_sampler(denoise, latents, num_steps=n, key=key, s_churn=s_churn)
    sig = np.asarray(schedules.edm_sigma_grid(n), np.float64)
    x = np.asarray(latents, np.float64) * sig[0]
    gamma = min(s_churn / n, np.sqrt(2) - 1)
    for i in range(n):
        z = np.asarray(jax.random.normal(jax.random.fold_in(key, i), latents.shape), np.float64)
        s_hat = sig[i] * (1 + gamma)
        x_hat = x + np.sqrt(s_hat**2 - sig[i] ** 2) * z
        d = (x_hat - 0.5 * x_hat) / s_hat
        x_next = x_hat + (sig[i + 1] - s_hat) * d
        if i < n - 1:
            d2 = (x_next - 0.5 * x_next) / sig[i + 1]
            x_next = x_hat + (sig[i + 1] - s_hat) * (0.5 * d + 0.5 * d2)
        x = x_next
    np.testing.assert_allclose(got, x, rtol=1e-4, atol=1e-4)


def test_ema_decay_is_edms_formula_before_and_after_the_rampup_cap():
    ema = ml_collections.ConfigDict({"halflife_kimg": 50.0, "rampup_ratio": 0.05})
    batch = 128
    early = 9  # images seen 10 * 128 = 1280, ramp-up half-life 64 images < 50,000
    np.testing.assert_allclose(
        train_state.ema_beta(early, batch, ema), 0.5 ** (batch / (0.05 * 10 * batch)), rtol=1e-6
    )
    late = 10_000  # ramp-up 0.05 * 10001 * 128 = 64,006 images > 50,000: the half-life is capped
    np.testing.assert_allclose(
        train_state.ema_beta(late, batch, ema), 0.5 ** (batch / 50_000.0), rtol=1e-6
    )


def test_learning_rate_warms_up_linearly_over_images_seen_after_the_step():
    optim = ml_collections.ConfigDict({"lr": 2e-3, "warmup_kimg": 10.0})
    schedule = train_state.learning_rate_schedule(optim, 100)
    np.testing.assert_allclose(schedule(0), 2e-3 * 100 / 10_000, rtol=1e-6)
    np.testing.assert_allclose(schedule(49), 2e-3 * 5_000 / 10_000, rtol=1e-6)
    np.testing.assert_allclose(schedule(500), 2e-3, rtol=1e-6)


def test_flip_mirrors_the_width_axis_of_the_flagged_rows_only():
    x = jnp.arange(2 * 3 * 4 * 1, dtype=jnp.float32).reshape(2, 3, 4, 1)
    out = train_step.flip_rows(x, jnp.array([True, False]))
    np.testing.assert_array_equal(out[0], x[0, :, ::-1])
    np.testing.assert_array_equal(out[1], x[1])


def test_batches_draw_every_image_uniformly():
    root = jax.random.key(0)
    drawn = np.concatenate(
        [np.asarray(train_step.batch_indices(root, s, 64, 5)) for s in range(50)]
    )
    counts = np.bincount(drawn, minlength=5)
    assert len(counts) == 5 and counts.min() > 0.8 * len(drawn) / 5


def test_fixed_copies_use_the_noise_seed_and_the_source_index():
    c = tiny_config(**{"train.seed": 7, "loss.noise_seed": 3})
    images = jnp.asarray(np.random.RandomState(0).uniform(-1, 1, (3, 16, 16, 1)).astype(np.float32))
    source = [5, 17, 2]
    copies = losses.noisy_training_copies(c.loss, images, source)
    key = jax.random.fold_in(jax.random.key(3), losses.KEY_NOISE_TN)
    for i, s in enumerate(source):
        eps = jax.random.normal(jax.random.fold_in(key, s), (16, 16, 1))
        np.testing.assert_allclose(copies[i], images[i] + c.loss.sigma_tn * eps, rtol=1e-6)


@pytest.fixture(scope="module")
def one_step():
    """One train step of the tiny MNIST config from its initial state, and what it started from."""
    c = tiny_config()
    c.loss.sigma_tn, c.optim.grad_clip = 0.3, 0.0  # a third of the rows on each branch; no clipping
    model = train_state.network(c, 1)
    optimizer, schedule = train_state.make_optimizer(c.optim, c.train.batch_size)
    body = train_step.make_step_body(c, model, optimizer, schedule)
    images = jnp.asarray(
        np.random.RandomState(0).uniform(-1, 1, (16, 16, 16, 1)).astype(np.float32)
    )
    source = 100 + 7 * jnp.arange(16)  # source indices, unlike the subset positions 0..15
    state = train_state.init_state(c, model, optimizer)
    new_state, metrics = jax.jit(
        lambda st, im: body(
            st,
            train_step.gather_batch(
                train_step.step_root_key(c),
                st.step,
                train_step.HeldData(im, source),
                c.train.batch_size,
            ),
        )
    )(state, images)
    return c, model, optimizer, state, new_state, jax.device_get(metrics), images


def test_logged_loss_is_the_batch_mean_and_each_branch_the_mean_over_its_rows(one_step):
    c, model, _, state, _, m, images = one_step
    assert 0 < m["frac_ambient"] < 1, "rows must get their own keys: both branches appear"
    np.testing.assert_allclose(
        m["loss"],
        m["frac_ambient"] * m["loss_ambient"] + (1 - m["frac_ambient"]) * m["loss_clean"],
        rtol=1e-5,
    )
    # the mean of the per-row losses, recomputed from the step's own draws
    step_root = train_step.step_root_key(c)
    step_key = jax.random.fold_in(step_root, 0)
    k_rows, k_dropout = jax.random.fold_in(step_key, 1), jax.random.fold_in(step_key, 2)
    index = train_step.batch_indices(step_root, 0, c.train.batch_size, 16)
    row_keys = jax.vmap(lambda b: jax.random.fold_in(k_rows, b))(jnp.arange(c.train.batch_size))
    objective = objective_lib.make_objective("ambient", sigma_tn=0.3, weighting=c.loss.weighting)
    raw = lambda x, cn: model.apply(state.params, x, cn, train=True, rngs={"dropout": k_dropout})
    from ambient_jax.diffusion.precond import edm_denoiser

    x_tn = losses.noisy_copy(images[index], 100 + 7 * index, 0.3, losses.noise_tn_key(c.loss))
    per_row, _ = objective(edm_denoiser(raw), images[index], x_tn, row_keys)
    np.testing.assert_allclose(m["loss"], float(jnp.mean(per_row)), rtol=1e-5)


def test_one_step_applies_adam_and_the_ema_by_their_formulas(one_step):
    c, model, optimizer, state, new_state, m, images = one_step
    beta = float(train_state.ema_beta(0, c.train.batch_size, c.ema))
    expected_ema = jax.tree_util.tree_map(
        lambda e, p: beta * e + (1 - beta) * p, state.ema_params, new_state.params
    )
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8),
        new_state.ema_params,
        expected_ema,
    )
    # Adam's first step moves every parameter by lr * g / (|g| + eps) = lr * sign(g)
    # (bias-corrected)
    lr = float(train_state.learning_rate_schedule(c.optim, c.train.batch_size)(0))
    moved = jax.tree_util.tree_leaves(
        jax.tree_util.tree_map(
            lambda a, b: np.abs(np.asarray(a - b)), new_state.params, state.params
        )
    )
    big = np.concatenate([x.ravel() for x in moved])
    assert np.median(big) == pytest.approx(lr, rel=1e-2)  # float32 rounding of a - b
    del optimizer, model, m, images


def test_pixel_embedding_centres_and_normalises_each_image():
    x = np.random.RandomState(0).uniform(-1, 1, (3, 4, 4, 1)).astype(np.float32)
    emb = memorization.pixel_embedding(x)
    flat = x.reshape(3, -1) - x.reshape(3, -1).mean(1, keepdims=True)
    np.testing.assert_allclose(emb, flat / np.linalg.norm(flat, axis=1, keepdims=True), rtol=1e-5)


def _extracted_by_hand(queries, refs, k):
    d = np.sqrt(((queries[:, None] - refs[None]) ** 2).sum(-1))
    d.sort(axis=1)
    return d[:, 0] < d[:, :k].mean(1) / 3.0


def test_carlini_extraction_is_one_third_of_the_mean_over_k_nearest():
    # refs: the origin and 50 points on orthogonal axes at growing distances
    dim = 60
    refs = np.zeros((51, dim), np.float32)
    for j in range(1, 51):
        refs[j, j] = 0.5 + j / 25.0
    u = np.zeros(dim, np.float32)
    u[55] = 1.0
    queries = np.stack([d * u for d in np.linspace(0.05, 1.2, 40)]).astype(np.float32)
    extracted, _, _ = memorization.extraction_report(queries, refs, k=50)
    np.testing.assert_array_equal(extracted, _extracted_by_hand(queries, refs, 50))
    assert np.any(_extracted_by_hand(queries, refs, 50) != _extracted_by_hand(queries, refs, 25)), (
        "k must matter here"
    )
    # a near-copy whose ratio lies between 1/3 and 1/2 is not extracted
    d = np.sqrt(((queries[:, None] - refs[None]) ** 2).sum(-1))
    d.sort(axis=1)
    ratio = d[:, 0] / d[:, :50].mean(1)
    between = (ratio > 1 / 3) & (ratio < 1 / 2)
    assert between.any() and not extracted[between].any()
    assert extracted[ratio < 1 / 3].all()


def test_similarity_share_counts_scores_strictly_above_tau():
    train_emb = np.eye(3, dtype=np.float32)
    angles = np.arccos([0.905, 0.895, 0.5, 0.99])
    samples = np.stack(
        [np.cos(a) * train_emb[0] + np.sin(a) * train_emb[1] for a in angles]
    ).astype(np.float32)
    _, _, summary = memorization.similarity_report(samples, train_emb, (0.9, 0.95))
    assert summary["S>0.9"] == pytest.approx(50.0) and summary["S>0.95"] == pytest.approx(25.0)


def test_feature_covariance_divides_by_n_minus_1():
    x = np.random.RandomState(1).randn(7, 3)
    mu, cov = fid.feature_statistics(x)
    centred = x - x.mean(0)
    np.testing.assert_allclose(cov, centred.T @ centred / 6, rtol=1e-12)
    np.testing.assert_allclose(mu, x.mean(0), rtol=1e-12)


def test_inception_edm_preprocessing_by_hand():
    """TF1 legacy bilinear (src = j * in / 299, border clamp), then (x - 128) / 128."""
    img = np.zeros((1, 2, 2, 3), np.float32)
    img[0, :, :, 0] = [[0, 100], [200, 255]]
    out = np.asarray(inception.preprocess(img, "edm"))
    assert out.shape == (1, 299, 299, 3)

    def axis_weights(j):
        src = j * 2 / 299
        low = int(np.floor(src))
        return low, min(low + 1, 1), src - low

    for i, j in [(0, 0), (100, 200), (149, 150), (298, 298)]:
        li, hi, fi = axis_weights(i)
        lj, hj, fj = axis_weights(j)
        c = img[0, :, :, 0]
        v = (c[li, lj] * (1 - fj) + c[li, hj] * fj) * (1 - fi) + (
            c[hi, lj] * (1 - fj) + c[hi, hj] * fj
        ) * fi
        np.testing.assert_allclose(out[0, i, j, 0], (v - 128) / 128, rtol=1e-5, atol=1e-6)


def test_label_memorization_difference_and_its_standard_error_by_hand():
    masks = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
    correct = np.array([[1.0], [1.0], [0.0], [1.0]])  # one evaluation point, 4 models
    est, se = label_memorization.in_out_difference(correct, masks)
    # example 0: in models 0, 1 (p_in = 1), out models 2, 3 (p_out = 0.5)
    np.testing.assert_allclose(est[0, 0], 1.0 - 0.5)
    np.testing.assert_allclose(se[0, 0], np.sqrt(1 * 0 / 2 + 0.5 * 0.5 / 2))
    # example 1: in models 1, 2 (p_in = 0.5), out models 0, 3 (p_out = 1)
    np.testing.assert_allclose(est[1, 0], 0.5 - 1.0)
    np.testing.assert_allclose(se[1, 0], np.sqrt(0.5 * 0.5 / 2 + 0))


def test_sampled_grid_uses_the_configured_sampler_settings():
    """generate's sampler is the configured one: Heun with the config's steps on the EDM grid."""
    c = tiny_config()
    c.sample.num_steps = 3
    calls = []

    class Recorder:
        def apply(self, params, x, c_noise, train=False):
            calls.append(1)
            return jnp.zeros_like(x)

    fn = generate.make_sample_fn(c, Recorder(), parallel.make_mesh(c.parallel))
    with jax.disable_jit():
        fn(None, jnp.zeros((8, 16, 16, 1)))
    assert len(calls) == 2 * 3 - 1


def test_every_mutant_of_the_harness_still_applies_to_one_place_and_names_real_tests():
    """A refactor that moves a formula must move its mutant too, or the harness silently tests
    nothing."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    listed = subprocess.run(
        [sys.executable, os.path.join(root, "benchmarks", "mutation.py"), "--list"],
        capture_output=True,
        text=True,
        cwd=root,
    )
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()]
    assert len(rows) >= 40
    for name, path, *tests in rows:
        assert os.path.isfile(os.path.join(root, path)) and tests, name
        assert all(os.path.isfile(os.path.join(root, t.split("::")[0])) for t in tests), name


def test_the_harness_counts_only_behaviour_tests():
    """The line-pin test above fails on any edit to a pinned line: the harness deselects it, so a
    mutant caught by it alone counts as surviving."""
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
    import mutation

    argv = mutation.pytest_argv(["tests/test_mutation_pins.py", mutation.LINE_PIN])
    assert argv[argv.index("--deselect") + 1] == mutation.LINE_PIN
    assert argv.count(mutation.LINE_PIN) == 1 and argv[-1] == "tests/test_mutation_pins.py"
    name = mutation.LINE_PIN.split("::")[1]
    assert name in open(__file__).read()  # the pin still has that name
