"""The objectives: closed-form optima, exact reductions and the VE/VP change of variables."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import empirical_denoiser, gaussian_denoiser, nonlinear_denoiser

from ambient_jax.diffusion import losses, precond, schedules
from ambient_jax.diffusion import objective as objective_lib

IMAGE = (4, 4, 1)


def test_ambient_loss_learns_clean_denoiser_from_noisy_data_only():
    """The lecture's Exercise 1: minimising ambient_loss over S_tn alone gives E[x0 | x_sigma]."""
    mu, std, sigma_tn, n = 0.3, 0.8, 0.5, 4096
    x0 = mu + std * jax.random.normal(jax.random.key(1), (n, *IMAGE))
    noise_key = jax.random.key(2)
    x_tn = losses.noisy_copy(x0, jnp.arange(n), sigma_tn, noise_key)  # the only data used below
    sigmas = jnp.array([0.7, 1.2, 2.0])  # one affine denoiser per sigma bucket, all > sigma_tn

    def bucket_loss(params, sigma, key):
        denoise = lambda x, s: params["a"] * x + params["b"]
        s = jnp.full((n,), sigma)
        return jnp.mean(
            losses.ambient_loss(denoise, x_tn, s, sigma_tn, jax.random.normal(key, x_tn.shape))
        )

    def total_loss(params, key):
        keys = jax.random.split(key, len(sigmas))
        return jnp.sum(jax.vmap(bucket_loss)(params, sigmas, keys))

    params = {"a": jnp.zeros(len(sigmas)), "b": jnp.zeros(len(sigmas))}
    opt = optax.adam(0.02)

    @jax.jit
    def step(params, opt_state, key):
        grads = jax.grad(total_loss)(params, key)
        updates, opt_state = opt.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state

    opt_state = opt.init(params)
    for i in range(800):
        params, opt_state = step(params, opt_state, jax.random.key(100 + i))

    true_a = std**2 / (std**2 + sigmas**2)
    true_b = mu * (1 - true_a)
    naive_a = (std**2 + sigma_tn**2) / (std**2 + sigmas**2)  # E[x_tn | x_sigma] slope
    np.testing.assert_allclose(params["a"], true_a, atol=0.015)
    np.testing.assert_allclose(params["b"], true_b, atol=0.015)
    assert np.all(np.abs(params["a"] - naive_a) > 0.045), (
        "fit the noisy target, not the clean denoiser"
    )


def test_empirical_optimum_has_lower_loss_than_perturbations(key):
    """For a finite training set the softmax-weighted mean is the exact minimiser of
    denoising_loss."""
    points = jax.random.normal(key, (8, *IMAGE))
    best = empirical_denoiser(points)
    b = 32768
    k_idx, k_sigma, k_noise, k_dir = jax.random.split(jax.random.key(3), 4)
    x0 = points[jax.random.randint(k_idx, (b,), 0, len(points))]
    sigma = jnp.exp(-1.2 + 1.2 * jax.random.normal(k_sigma, (b,)))  # EDM's log-normal levels
    noise = jax.random.normal(k_noise, x0.shape)
    loss = lambda d: float(jnp.mean(losses.denoising_loss(d, x0, sigma, noise)))
    best_loss = loss(best)
    for i, direction in enumerate(jax.random.normal(k_dir, (4, *IMAGE))):
        shifted = lambda x, s, v=direction: best(x, s) + 0.1 * v
        assert best_loss < loss(shifted), f"perturbation {i} beat the optimum"
    blended = lambda x, s: 0.9 * best(x, s) + 0.1 * gaussian_denoiser(0.0, 1.0)(x, s)
    assert best_loss < loss(blended)


def test_sampling_the_empirical_optimum_replays_training_points(key):
    """The analytical reason the project exists: the optimal denoiser only copies its data."""
    from ambient_jax.diffusion.sampling import edm_sampler

    points = jax.random.normal(key, (8, *IMAGE))
    samples = jax.jit(lambda z: edm_sampler(empirical_denoiser(points), z))(
        jax.random.normal(jax.random.key(4), (64, *IMAGE))
    )
    dist = jnp.sqrt(jnp.sum((samples.reshape(64, 1, -1) - points.reshape(1, 8, -1)) ** 2, -1))
    assert float(jnp.max(jnp.min(dist, axis=1))) < 1e-4
    assert len(set(np.asarray(jnp.argmin(dist, axis=1)).tolist())) >= 4, (
        "samples should hit several points"
    )


def test_ve_and_vp_ambient_losses_agree_after_change_of_variables(key):
    """Eq. (5) in VP form equals the unweighted VE ambient loss divided by (1 + sigma_tn^2)."""
    b = 16
    k_x, k_eps, k_n, k_net = jax.random.split(key, 4)
    x0 = jax.random.normal(k_x, (b, *IMAGE))
    eps = jax.random.normal(k_eps, x0.shape)
    noise = jax.random.normal(k_n, x0.shape)
    denoise = nonlinear_denoiser(k_net, IMAGE)
    sigma_tn = 0.7
    sigma = jnp.linspace(0.8, 20.0, b)
    x_tn_ve = x0 + sigma_tn * eps
    ve = losses.ambient_loss(denoise, x_tn_ve, sigma, sigma_tn, noise, weighting="none")

    s, s_tn = schedules.ve_sigma_to_vp(sigma), schedules.ve_sigma_to_vp(sigma_tn)
    x_tn_vp = jnp.sqrt(1 - s_tn**2) * x0 + s_tn * eps  # the VP process at s_tn
    vp = losses.ambient_loss_vp(precond.vp_denoiser(denoise), x_tn_vp, s, s_tn, noise)
    np.testing.assert_allclose(vp * (1 + sigma_tn**2), ve, rtol=2e-5)

    # The clean branch: the VP and VE denoising losses are the same number.
    ve_clean = losses.ambient_loss(denoise, x0, sigma, 0.0, noise, weighting="none")
    vp_clean = losses.ambient_loss_vp(precond.vp_denoiser(denoise), x0, s, jnp.zeros_like(s), noise)
    np.testing.assert_allclose(vp_clean, ve_clean, rtol=2e-5)


def test_sigma_tn_zero_is_exactly_the_denoising_objective(key):
    b = 32
    x0 = jax.random.normal(key, (b, *IMAGE))
    keys = jax.random.split(jax.random.key(5), b)
    denoise = nonlinear_denoiser(jax.random.key(6), IMAGE)
    sigma = jnp.exp(jnp.linspace(-3, 3, b))
    noise = jax.random.normal(jax.random.key(7), x0.shape)
    np.testing.assert_array_equal(
        losses.ambient_loss(denoise, x0, sigma, 0.0, noise),
        losses.denoising_loss(denoise, x0, sigma, noise),
    )
    for rule in losses.BRANCH_RULES:
        ddpm = objective_lib.make_objective("ddpm", branch_rule=rule)
        ambient0 = objective_lib.make_objective("ambient", sigma_tn=0.0, branch_rule=rule)
        loss_ddpm, aux_ddpm = ddpm(denoise, x0, None, keys)
        loss_amb, aux_amb = ambient0(denoise, x0, x0, keys)
        np.testing.assert_array_equal(loss_ddpm, loss_amb)
        assert not bool(jnp.any(aux_amb["is_ambient"]))


def test_paper_rule_routes_rows_by_sigma_and_uses_the_fixed_copy(key):
    b, sigma_tn = 256, 0.5
    x0 = jax.random.normal(key, (b, *IMAGE))
    index = jnp.arange(b) * 3 + 1
    keys = jax.random.split(jax.random.key(9), b)
    noise_key = jax.random.key(10)
    denoise = nonlinear_denoiser(jax.random.key(11), IMAGE)
    x_tn = losses.noisy_copy(x0, index, sigma_tn, noise_key)
    objective = objective_lib.make_objective("ambient", sigma_tn=sigma_tn)
    loss, aux = objective(denoise, x0, x_tn, keys)
    sigma = aux["sigma"]
    np.testing.assert_array_equal(aux["is_ambient"], sigma >= sigma_tn)
    frac = float(jnp.mean(aux["is_ambient"]))
    assert 0.25 < frac < 0.43, frac  # P(ln sigma >= ln 0.5) under N(-1.2, 1.2^2) is 0.337

    # Row by row it is the ambient loss on x_tn or the denoising loss on x0, with the same draws.
    _, _, _, noise = objective_lib.row_draws(keys, IMAGE, x0.dtype)
    expected = jnp.where(
        aux["is_ambient"],
        losses.ambient_loss(denoise, x_tn, jnp.maximum(sigma, sigma_tn), sigma_tn, noise),
        losses.denoising_loss(denoise, x0, sigma, noise),
    )
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_lecture_rule_splits_time_at_t_n(key):
    b, sigma_tn = 512, 1.0
    x0 = jax.random.normal(key, (b, *IMAGE))
    keys = jax.random.split(jax.random.key(12), b)
    objective = objective_lib.make_objective("ambient", sigma_tn=sigma_tn, branch_rule="lecture")
    x_tn = losses.noisy_copy(x0, jnp.arange(b), sigma_tn, jax.random.key(13))
    loss, aux = objective(nonlinear_denoiser(jax.random.key(14), IMAGE), x0, x_tn, keys)
    amb = np.asarray(aux["is_ambient"])
    sigma = np.asarray(aux["sigma"])
    assert 0.4 < amb.mean() < 0.6  # drawn uniformly from S u S_tn
    assert np.all(sigma[amb] >= sigma_tn * (1 - 1e-5)) and np.all(
        sigma[~amb] <= sigma_tn * (1 + 1e-5)
    )
    assert np.all(np.isfinite(loss))


def test_rescaled_weighting_multiplies_the_ambient_branch(key):
    b, sigma_tn = 8, 0.5
    x = jax.random.normal(key, (b, *IMAGE))
    noise = jax.random.normal(jax.random.key(15), x.shape)
    sigma = jnp.linspace(0.6, 5.0, b)
    denoise = nonlinear_denoiser(jax.random.key(16), IMAGE)
    plain = losses.ambient_loss(denoise, x, sigma, sigma_tn, noise)
    rescaled = losses.ambient_loss(denoise, x, sigma, sigma_tn, noise, weighting="rescaled")
    np.testing.assert_allclose(
        rescaled, plain * sigma**4 / (sigma**2 - sigma_tn**2) ** 2, rtol=1e-5
    )


def test_fixed_noise_is_a_pure_function_of_image_index():
    noise_key = jax.random.key(17)
    index = jnp.arange(16)
    first = losses.fixed_noise(noise_key, index, IMAGE)
    again = losses.fixed_noise(noise_key, index[::-1], IMAGE)[
        ::-1
    ]  # another "epoch" in another order
    np.testing.assert_array_equal(first, again)
    one_by_one = jnp.concatenate(
        [losses.fixed_noise(noise_key, index[i : i + 1], IMAGE) for i in range(16)]
    )
    np.testing.assert_array_equal(first, one_by_one)
    flat = np.asarray(first).reshape(16, -1)
    assert np.max(np.abs(np.corrcoef(flat))[~np.eye(16, dtype=bool)]) < 0.9, (
        "images must get different noise"
    )
    assert len({row.tobytes() for row in flat}) == 16

    # The same numbers on 8 devices (pmap over 2 images each) and under a sharded jit.
    per_device = jax.pmap(lambda i: losses.fixed_noise(noise_key, i, IMAGE))(index.reshape(8, 2))
    np.testing.assert_array_equal(first, np.asarray(per_device).reshape(first.shape))
    mesh = jax.make_mesh((8,), ("data",))
    sharded = jax.device_put(
        index, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    )
    np.testing.assert_array_equal(
        first, jax.jit(lambda i: losses.fixed_noise(noise_key, i, IMAGE))(sharded)
    )


def test_capped_rescale_is_the_edm_loss_times_the_capped_factor(key):
    b, sigma_tn, cap = 16, 0.5, 4.0
    x = jax.random.normal(key, (b, *IMAGE))
    noise = jax.random.normal(jax.random.key(15), x.shape)
    sigma = jnp.linspace(0.51, 5.0, b)
    denoise = nonlinear_denoiser(jax.random.key(16), IMAGE)
    # by hand: lambda(sigma) ||a D(x_tn + g n) + (sigma_tn^2 / sigma^2) x_s - x_tn||^2 times
    # min(sigma^4 / g^4, cap)
    xs, s, g2 = (
        np.asarray(x, np.float64),
        np.asarray(sigma, np.float64),
        np.asarray(sigma**2 - sigma_tn**2, np.float64),
    )
    x_s = xs + np.sqrt(g2)[:, None, None, None] * np.asarray(noise, np.float64)
    d = np.asarray(denoise(jnp.asarray(x_s, jnp.float32), sigma), np.float64)
    pred = (g2 / s**2)[:, None, None, None] * d + (sigma_tn**2 / s**2)[:, None, None, None] * x_s
    lam = (s**2 + 0.25) / (s * 0.5) ** 2
    expected = lam * ((pred - xs) ** 2).sum(axis=(1, 2, 3)) * np.minimum(s**4 / g2**2, cap)
    capped = losses.ambient_loss(
        denoise, x, sigma, sigma_tn, noise, weighting="rescaled", rescale_cap=cap
    )
    np.testing.assert_allclose(capped, expected, rtol=2e-4)
    assert np.any(s**4 / g2**2 > cap) and np.any(
        s**4 / g2**2 < cap
    )  # both sides of the cap are exercised


def test_normalized_weighting_is_the_inverse_target_variance_times_the_rescaled_loss(key):
    b, sigma_tn, sd = 16, 1.5, 0.5
    x = jax.random.normal(key, (b, *IMAGE))
    noise = jax.random.normal(jax.random.key(15), x.shape)
    sigma = jnp.geomspace(1.51, 80.0, b)
    denoise = nonlinear_denoiser(jax.random.key(16), IMAGE)
    rescaled = losses.ambient_loss(denoise, x, sigma, sigma_tn, noise, weighting="rescaled")
    normalized = losses.ambient_loss(denoise, x, sigma, sigma_tn, noise, weighting="normalized")
    s = np.asarray(sigma, np.float64)
    v = sigma_tn**2 + sigma_tn**4 / (
        s**2 - sigma_tn**2
    )  # per-pixel variance of the target around x0
    np.testing.assert_allclose(
        normalized, np.asarray(rescaled, np.float64) * sd**2 / (sd**2 + v), rtol=1e-4
    )
    # a row exactly at sigma_tn, or within float rounding of it, gives a finite loss and gradient
    for at in (sigma_tn, sigma_tn * (1 + 1e-7), sigma_tn * (1 + 1e-4)):
        s_at = jnp.full((b,), at, jnp.float32)
        for weighting in ("rescaled", "normalized"):
            value, grad = jax.value_and_grad(
                lambda z: jnp.sum(
                    losses.ambient_loss(
                        lambda x, s: denoise(x, s) * z,
                        x,
                        s_at,
                        sigma_tn,
                        noise,
                        weighting=weighting,
                    )
                )
            )(1.0)
            assert np.isfinite(value) and np.isfinite(grad), (at, weighting)
    # clean rows (sigma_tn = 0) are untouched
    clean = losses.ambient_loss(denoise, x, sigma, 0.0, noise, weighting="normalized")
    np.testing.assert_allclose(clean, losses.denoising_loss(denoise, x, sigma, noise), rtol=1e-6)


def test_ambient_fraction_rebalances_branches_and_keeps_the_truncated_log_normal(key):
    from scipy import stats

    b, sigma_tn, f = 20000, 1.5, 0.3  # not 0.5: a coin with p = 1/2 must not pass for the fraction
    objective = objective_lib.make_objective("ambient", sigma_tn=sigma_tn, ambient_fraction=f)
    x0 = jnp.zeros((b, *IMAGE))
    _, aux = objective(lambda x, s: x, x0, x0, jax.random.split(jax.random.key(2), b))
    amb, log_sigma = np.asarray(aux["is_ambient"]), np.log(np.asarray(aux["sigma"]))
    assert abs(amb.mean() - f) < 0.015
    assert np.all(log_sigma[amb] >= np.log(sigma_tn)) and np.all(log_sigma[~amb] < np.log(sigma_tn))
    # each branch follows N(-1.2, 1.2^2) truncated at ln sigma_tn (Kolmogorov-Smirnov against the
    # definition)
    a = (np.log(sigma_tn) + 1.2) / 1.2
    assert stats.kstest((log_sigma[amb] + 1.2) / 1.2, stats.truncnorm(a, np.inf).cdf).pvalue > 0.01
    assert (
        stats.kstest((log_sigma[~amb] + 1.2) / 1.2, stats.truncnorm(-np.inf, a).cdf).pvalue > 0.01
    )
    # extreme draws stay finite and on their side of the boundary (1 - q rounds to 0 in float32)
    normal = jnp.array([-40.0, -8.0, -5.5, 0.0, 5.5, 8.0, 40.0])
    for above in (True, False):
        s = objective_lib._truncated_log_normal(
            normal, jnp.full(normal.shape, above), sigma_tn, -1.2, 1.2
        )
        assert np.all(np.isfinite(s)) and (
            np.all(s > sigma_tn) if above else np.all(s < sigma_tn)
        ), (above, s)


def test_sigma_switch_trains_clean_rows_up_to_the_switch_and_ambient_rows_above(key):
    b, sigma_tn, switch = 512, 0.5, 1.0
    x0 = jax.random.normal(key, (b, *IMAGE))
    index = jnp.arange(b)
    keys = jax.random.split(jax.random.key(9), b)
    noise_key = jax.random.key(10)
    denoise = nonlinear_denoiser(jax.random.key(11), IMAGE)
    objective = objective_lib.make_objective(
        "ambient", sigma_tn=sigma_tn, sigma_switch=switch, weighting="rescaled"
    )
    x_tn = losses.noisy_copy(x0, index, sigma_tn, noise_key)
    loss, aux = objective(denoise, x0, x_tn, keys)
    sigma = aux["sigma"]
    np.testing.assert_array_equal(aux["is_ambient"], sigma >= switch)
    assert np.any((sigma >= sigma_tn) & (sigma < switch))  # rows in the clean buffer exist
    _, _, _, noise = objective_lib.row_draws(keys, IMAGE, x0.dtype)
    expected = jnp.where(
        sigma >= switch,
        losses.ambient_loss(
            denoise, x_tn, jnp.maximum(sigma, sigma_tn), sigma_tn, noise, weighting="rescaled"
        ),
        losses.denoising_loss(denoise, x0, sigma, noise),
    )
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(objective="gan"), "loss.objective"),
        (dict(branch_rule="coin"), "loss.branch_rule"),
        (dict(weighting="sqrt"), "loss.weighting"),
        (dict(sigma_tn=-1.0), "loss.sigma_tn"),
        (dict(sigma_tn=0.5, sigma_switch=0.4), "loss.sigma_switch"),
        (dict(sigma_tn=0.5, rescale_cap=-1.0), "loss.rescale_cap"),
        (dict(sigma_tn=0.5, ambient_fraction=1.0), "loss.ambient_fraction"),
        (dict(sigma_tn=0.5, branch_rule="lecture", rescale_cap=4.0), "branch_rule=paper"),
    ],
)
def test_bad_objective_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        objective_lib.make_objective(**kwargs)


@pytest.mark.parametrize("rule", losses.BRANCH_RULES)
def test_the_ambient_objective_without_noisy_copies_says_what_it_needs(rule):
    x0, keys = jnp.zeros((2, *IMAGE)), jax.random.split(jax.random.key(0), 2)
    ambient = objective_lib.make_objective("ambient", sigma_tn=0.5, branch_rule=rule)
    with pytest.raises(ValueError, match="needs x_tn.*losses.noisy_copy"):
        ambient(lambda x, s: x, x0, None, keys)
    per_image = (jnp.full((2,), 0.5), jnp.ones((2,), bool)) if rule == "paper" else ()
    if per_image:
        with pytest.raises(ValueError, match="needs x_tn"):
            ambient(lambda x, s: x, x0, None, keys, *per_image)


# ----------------------------------------------------------------------------- per-image sigma_tn


@pytest.mark.parametrize("weighting", losses.WEIGHTINGS)
@pytest.mark.parametrize("offset", [0.0, 0.3])
def test_per_image_rows_with_one_shared_level_are_todays_loss(key, weighting, offset):
    """Every image clean at one sigma_tn, its boundary sigma_tn + offset: the per-image rows are
    the paper rule with sigma_switch = sigma_tn + offset, draw for draw."""
    b, sigma_tn = 256, 0.5
    x0 = jax.random.normal(key, (b, *IMAGE))
    index, keys = jnp.arange(b) * 3 + 1, jax.random.split(jax.random.key(9), b)
    denoise = nonlinear_denoiser(jax.random.key(11), IMAGE)
    common = dict(sigma_tn=sigma_tn, weighting=weighting)
    today = objective_lib.make_objective("ambient", sigma_switch=sigma_tn + offset, **common)
    per_image = objective_lib.make_objective("ambient", switch_offset=offset, **common)
    x_tn = losses.noisy_copy(x0, index, sigma_tn, jax.random.key(10))
    loss, aux = today(denoise, x0, x_tn, keys)
    levels, clean = jnp.full((b,), sigma_tn), jnp.ones((b,), bool)
    loss_pi, aux_pi = per_image(denoise, x0, x_tn, keys, levels, clean)
    np.testing.assert_array_equal(loss, loss_pi)
    np.testing.assert_array_equal(aux["is_ambient"], aux_pi["is_ambient"])
    assert 0.05 < float(jnp.mean(aux["is_ambient"])) < 0.6


def test_a_corrupted_image_trains_only_above_its_level_on_itself(key):
    """Rows of corrupted images (no clean version) are all ambient, at sigma >= their own
    boundary, with the image as given as the noisy observation; clean rows at level 0 are plain
    denoising."""
    b = 4096
    x0 = jax.random.normal(key, (b, *IMAGE))
    keys = jax.random.split(jax.random.key(20), b)
    levels = jnp.asarray(np.random.RandomState(0).choice([0.0, 0.4, 1.5], b), jnp.float32)
    clean = levels == 0
    denoise = nonlinear_denoiser(jax.random.key(21), IMAGE)
    objective = objective_lib.make_objective(
        "ambient", sigma_tn=1.0, switch_ratio=1.155, switch_offset=0.05, weighting="rescaled"
    )
    loss, aux = objective(denoise, x0, x0, keys, levels, clean)  # each image is its own x_tn
    sigma, amb = np.asarray(aux["sigma"]), np.asarray(aux["is_ambient"])
    boundary = np.asarray(levels) * 1.155 + 0.05
    assert np.all(amb[~clean]) and not np.any(amb[clean])
    assert np.all(sigma[~clean] >= boundary[~clean])
    # the corrupted rows' sigma: the log-normal conditioned above the boundary, quartile by
    # quartile (rows kept where they fell above and rows redrawn alike; ~1,365 rows per level)
    for level in (0.4, 1.5):
        rows = np.asarray(levels) == level
        cut = float(jax.scipy.stats.norm.cdf((np.log(level * 1.155 + 0.05) + 1.2) / 1.2))
        for quantile in (0.25, 0.5, 0.75):
            z = float(jax.scipy.stats.norm.ppf(cut + quantile * (1 - cut)))
            expected = np.exp(-1.2 + 1.2 * z)
            got = np.quantile(sigma[rows], quantile)
            assert abs(got / expected - 1) < 0.06, (level, quantile, got, expected)
    _, _, _, noise = objective_lib.row_draws(keys, IMAGE, x0.dtype)
    expected = jnp.where(
        jnp.asarray(amb),
        losses.ambient_loss(denoise, x0, sigma, levels, noise, weighting="rescaled"),
        losses.denoising_loss(denoise, x0, sigma, noise),
    )
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


@pytest.mark.parametrize("sigma0", [0.6, 1.5])
def test_per_image_objective_recovers_the_clean_denoiser_of_gaussian_data(sigma0):
    """Gaussian data, std s = 0.5 per pixel: half the images clean, a quarter corrupted by
    additive noise of sigma_tn 0.3 and a quarter by 0.8 (no clean version). Among denoisers
    D = c x at sigma0, the per-image objective's loss is least at the clean denoiser's
    c* = s^2 / (s^2 + sigma0^2), at sigma0 = 0.6 (above 0.3 only) and 1.5 (above both); measured
    0.4099 against 0.4098 and 0.1006 against 0.1. Ignoring the corruption (every image as if
    clean) is least at the noisy data's sum Var_i / sum (Var_i + sigma0^2) instead (0.545 and
    0.162): the test tells the two apart."""
    s, b, shape = 0.5, 4096, (8, 8, 1)
    rng = np.random.RandomState(1)
    levels = np.concatenate([np.zeros(b // 2), np.full(b // 4, 0.3), np.full(b // 4, 0.8)])
    x0 = s * rng.randn(b, *shape)
    observed = jnp.asarray(x0 + levels[:, None, None, None] * rng.randn(b, *shape), jnp.float32)
    levels, clean = jnp.asarray(levels, jnp.float32), jnp.asarray(levels == 0)
    keys = jax.random.split(jax.random.key(30), b)
    c_clean = s**2 / (s**2 + sigma0**2)

    def best_c(objective, *extra):
        """argmin over c of the summed loss of the rows drawn at sigma0 (a parabola in c); rows
        at other levels see the clean denoiser, whose loss does not depend on c."""

        def total(c):
            def denoise(x, sigma):
                at = jnp.abs(sigma / sigma0 - 1) < 0.01
                factor = jnp.where(at, c, s**2 / (s**2 + sigma**2))
                return jnp.reshape(factor, (-1,) + (1,) * (x.ndim - 1)) * x

            return float(jnp.sum(objective(denoise, observed, observed, keys, *extra)[0]))

        l0, l1, l2 = total(0.0), total(0.5), total(1.0)
        a, b_ = 2 * (l2 - 2 * l1 + l0), (4 * l1 - 3 * l0 - l2)  # L(c) = a c^2 + b c + ...
        return -b_ / (2 * a)

    narrow = dict(p_mean=float(np.log(sigma0)), p_std=1e-3)
    per_image = objective_lib.make_objective(
        "ambient", sigma_tn=1.0, weighting="rescaled", **narrow
    )
    got = best_c(per_image, levels, clean)
    assert abs(got / c_clean - 1) < 0.04, (got, c_clean)
    variance = s**2 + np.asarray(levels) ** 2  # ignoring the corruption, every row is at sigma0
    c_noisy = variance.sum() / (variance + sigma0**2).sum()
    got_ignoring = best_c(objective_lib.make_objective("ddpm", **narrow))
    assert abs(got_ignoring / c_noisy - 1) < 0.04, (got_ignoring, c_noisy)
    assert abs(got_ignoring / c_clean - 1) > 0.2  # the two objectives are told apart


def _two_gaussians_denoiser(s_a, s_b, share_a):
    """The exact denoiser of the mixture share_a N(0, s_a^2 I) + (1 - share_a) N(0, s_b^2 I), and
    that of N(0, s_a^2 I) alone."""

    def of_a(x, sigma):
        return x * jnp.reshape(s_a**2 / (s_a**2 + sigma**2), (-1,) + (1,) * (x.ndim - 1))

    def of_mixture(x, sigma):
        flat, d = x.reshape(x.shape[0], -1), x[0].size
        log_w = [
            np.log(share) - 0.5 * d * jnp.log(s**2 + sigma**2)
            - 0.5 * jnp.sum(flat**2, axis=1) / (s**2 + sigma**2)
            for share, s in ((share_a, s_a), (1 - share_a, s_b))
        ]  # fmt: skip
        w_a = jax.nn.sigmoid(log_w[0] - log_w[1])
        gain = w_a * s_a**2 / (s_a**2 + sigma**2) + (1 - w_a) * s_b**2 / (s_b**2 + sigma**2)
        return x * jnp.reshape(gain, (-1,) + (1,) * (x.ndim - 1))

    return of_a, of_mixture


@pytest.mark.parametrize("sigma0", [0.5, 2.0])
def test_a_window_top_gives_the_mixtures_denoiser_below_it_and_the_targets_above(sigma0):
    """Target data N(0, 0.3^2 I) (half the images) and other data N(0, 1) used only up to
    sigma_max = 1 (the other half; 8x8 pixels). Among D_lam = lam D_mix + (1 - lam) D_target at
    sigma0, the windowed objective's loss is least at lam = 1 below sigma_max (sigma0 0.5: every
    image trains there, the minimiser is the mixture's exact denoiser) and at lam = 0 above it
    (sigma0 2: only the target's images train there, its own denoiser). Both populations as one
    data set (no top) give lam = 1 at either level: the test tells the two apart."""
    s_a, s_b, b, shape, top = 0.3, 1.0, 4096, (8, 8, 1), 1.0
    rng = np.random.RandomState(2)
    scale = np.concatenate([np.full(b // 2, s_a), np.full(b // 2, s_b)])
    x0 = jnp.asarray(scale[:, None, None, None] * rng.randn(b, *shape), jnp.float32)
    sigma_max = jnp.asarray(np.where(scale == s_a, np.inf, top), jnp.float32)
    zeros, clean = jnp.zeros(b), jnp.ones(b, bool)
    keys = jax.random.split(jax.random.key(31), b)
    of_a, of_mixture = _two_gaussians_denoiser(s_a, s_b, 0.5)
    objective = objective_lib.make_objective(
        "ddpm", weighting="edm", p_mean=float(np.log(sigma0)), p_std=1e-3
    )

    def best_lam(*per_image):
        """argmin over lam of the summed loss of the rows at sigma0 (a parabola in lam); a row
        moved to its window's top sees the target's denoiser there, which lam does not touch."""

        def total(lam):
            def denoise(x, sigma):
                at = jnp.reshape(jnp.abs(sigma / sigma0 - 1) < 0.01, (-1, 1, 1, 1))
                mixed = lam * of_mixture(x, sigma) + (1 - lam) * of_a(x, sigma)
                return jnp.where(at, mixed, of_a(x, sigma))

            return float(jnp.sum(objective(denoise, x0, x0, keys, *per_image)[0]))

        l0, l1, l2 = total(0.0), total(0.5), total(1.0)
        return -(4 * l1 - 3 * l0 - l2) / (4 * (l2 - 2 * l1 + l0))

    windowed, as_one = best_lam(zeros, clean, sigma_max), best_lam(zeros, clean)
    assert abs(as_one - 1) < 0.1, as_one  # one data set: the mixture at every level
    if sigma0 < top:
        assert abs(windowed - 1) < 0.1, windowed
    else:
        assert abs(windowed) < 0.1 and abs(as_one - windowed) > 0.8, (windowed, as_one)


def test_rows_outside_their_window_are_redrawn_from_the_log_normal_inside_it(key):
    """A row of an image with the window [lo, hi] (clean: lo 0; corrupted: lo its boundary; both
    bounds here) trains at the log-normal conditioned on [lo, hi], quartile by quartile; rows
    of images without a top keep today's levels, bit for bit."""
    b = 8192
    x0 = jax.random.normal(key, (b, *IMAGE))
    keys = jax.random.split(jax.random.key(40), b)
    rng = np.random.RandomState(3)
    kind = rng.randint(0, 3, b)  # 0: clean, no top; 1: clean, top 0.5; 2: corrupted 0.4, top 2
    levels = jnp.asarray(np.where(kind == 2, 0.4, 0.0), jnp.float32)
    clean = jnp.asarray(kind != 2)
    tops = jnp.asarray(np.select([kind == 1, kind == 2], [0.5, 2.0], np.inf), jnp.float32)
    objective = objective_lib.make_objective("ambient", sigma_tn=1.0, weighting="rescaled")
    denoise = nonlinear_denoiser(jax.random.key(41), IMAGE)
    loss, aux = objective(denoise, x0, x0, keys, levels, clean, tops)
    loss_today, aux_today = objective(denoise, x0, x0, keys, levels, clean)
    sigma, today = np.asarray(aux["sigma"]), np.asarray(aux_today["sigma"])
    np.testing.assert_array_equal(sigma[kind == 0], today[kind == 0])
    np.testing.assert_array_equal(np.asarray(loss)[kind == 0], np.asarray(loss_today)[kind == 0])
    np.testing.assert_array_equal(aux["is_ambient"], aux_today["is_ambient"])
    cdf = lambda level: float(jax.scipy.stats.norm.cdf((np.log(level) + 1.2) / 1.2))
    for k, lo, hi in ((1, 0.0, 0.5), (2, 0.4, 2.0)):
        rows = sigma[kind == k]
        assert rows.min() >= lo and rows.max() <= hi * (1 + 1e-6)
        c_lo, c_hi = (cdf(lo) if lo else 0.0), cdf(hi)
        for quantile in (0.25, 0.5, 0.75):
            z = float(jax.scipy.stats.norm.ppf(c_lo + quantile * (c_hi - c_lo)))
            expected, got = np.exp(-1.2 + 1.2 * z), np.quantile(rows, quantile)
            assert abs(got / expected - 1) < 0.06, (k, quantile, got, expected)


def test_a_weighting_is_one_entry_of_the_table(monkeypatch):
    """losses.WEIGHTING_TABLE is read by the loss, the config check and ambient-train's --help:
    one entry (here twice EDM's weight) is a new weighting everywhere."""
    from ambient_jax import config as config_lib

    twice = lambda sigma, sigma_tn, noisy, safe_gap, sigma_data, cap: (
        2 * losses.edm_weight(sigma, sigma_data)
    )
    monkeypatch.setitem(losses.WEIGHTING_TABLE, "twice_edm", (twice, "twice EDM's weight"))
    c = config_lib.base_config()
    c.loss.weighting = "twice_edm"
    config_lib.check_config(c)
    assert "twice_edm  twice EDM's weight" in losses.weighting_help()
    x0 = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
    noise = jax.random.normal(jax.random.key(1), x0.shape)
    sigma = jnp.array([0.3, 0.9, 1.7, 4.0])
    denoise = lambda x, s: 0.5 * x
    tn = jnp.full((4,), 0.5)
    edm = losses.two_regime_ve(denoise, x0, sigma, tn, noise, 0.5, "edm")
    new = losses.two_regime_ve(denoise, x0, sigma, tn, noise, 0.5, "twice_edm")
    np.testing.assert_allclose(new, 2 * edm, rtol=1e-6)
    c.loss.weighting = "thrice"
    with pytest.raises(ValueError, match="loss.weighting: must be one of .*twice_edm"):
        config_lib.check_config(c)
