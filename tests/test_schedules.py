"""Noise processes and EDM preconditioning."""

import jax
import jax.numpy as jnp
import numpy as np

from ambient_jax.diffusion import precond, schedules
from ambient_jax.diffusion.schedules import expand_rows


def ve_perturb(x0, sigma, noise):
    """The VE (EDM) forward process by its definition: x_sigma = x0 + sigma noise."""
    return x0 + expand_rows(sigma, x0) * noise


def vp_perturb(x0, s, noise):
    """The lecture's VP forward process by its definition: x_t = sqrt(1 - s^2) x0 + s noise."""
    s = expand_rows(s, x0)
    return jnp.sqrt(1.0 - s**2) * x0 + s * noise


def test_ve_and_vp_processes_are_the_same_up_to_scale(key):
    x0 = jax.random.normal(key, (5, 3, 3, 1))
    noise = jax.random.normal(jax.random.key(1), x0.shape)
    sigma = jnp.array([0.01, 0.5, 1.0, 4.0, 80.0])
    s = schedules.ve_sigma_to_vp(sigma)
    x_ve = ve_perturb(x0, sigma, noise)
    x_vp = vp_perturb(x0, s, noise)
    np.testing.assert_allclose(schedules.ve_to_vp_x(x_ve, sigma), x_vp, rtol=1e-4, atol=1e-5)
    # VP -> VE divides by sqrt(1 - s^2), which float32 resolves only for moderate sigma.
    moderate = slice(0, 4)
    np.testing.assert_allclose(
        schedules.vp_to_ve_x(x_vp, s)[moderate], x_ve[moderate], rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(schedules.vp_to_ve_sigma(s)[moderate], sigma[moderate], rtol=1e-4)


def test_vp_time_and_level_are_inverse():
    t = jnp.linspace(schedules.VP_T_MIN, 1.0, 50)
    np.testing.assert_allclose(schedules.vp_t_of_s(schedules.vp_s_of_t(t)), t, rtol=1e-3, atol=1e-6)
    s = schedules.vp_s_of_t(t)
    assert np.all(np.diff(np.asarray(s)) > 0) and float(s[-1]) < 1.0


def test_edm_preconditioning_keeps_unit_scales():
    sigma = jnp.array([0.002, 0.1, 0.5, 2.0, 80.0])
    c_skip, c_out, c_in, c_noise = precond.edm_coefficients(sigma)
    sd = precond.SIGMA_DATA
    # Unit-variance network input and training target (Karras et al. 2022, appendix B.6).
    np.testing.assert_allclose(c_in**2 * (sd**2 + sigma**2), 1.0, rtol=1e-6)
    np.testing.assert_allclose(
        (sd**2 * (1 - c_skip) ** 2 + c_skip**2 * sigma**2) / c_out**2, 1.0, rtol=1e-5
    )
    np.testing.assert_allclose(c_noise, jnp.log(sigma) / 4, rtol=1e-6)


def test_edm_denoiser_wraps_the_raw_network(key):
    x = jax.random.normal(key, (3, 2, 2, 1))
    sigma = jnp.array([0.1, 1.0, 10.0])
    seen = {}

    def raw(x_in, c_noise):
        seen["x_in"], seen["c_noise"] = x_in, c_noise
        return jnp.ones_like(x_in)

    out = precond.edm_denoiser(raw)(x, sigma)
    c_skip, c_out, c_in, c_noise = precond.edm_coefficients(sigma)
    np.testing.assert_allclose(seen["x_in"], c_in[:, None, None, None] * x, rtol=1e-6)
    np.testing.assert_allclose(seen["c_noise"], c_noise, rtol=1e-6)
    np.testing.assert_allclose(
        out, c_skip[:, None, None, None] * x + c_out[:, None, None, None], rtol=1e-6
    )


def test_vp_ve_and_iddpm_coefficients_match_their_definitions_by_hand():
    """EDM's Table 1 columns, each value worked out from its definition here."""
    vp = precond.Precond("vp")
    # sigma(1) = sqrt(exp(19.9 / 2 + 0.1) - 1) = sqrt(e^10.05 - 1): VPPrecond's sigma_max
    low, high = precond.supported_levels(vp)
    np.testing.assert_allclose(high, np.sqrt(np.exp(10.05) - 1), rtol=1e-6)
    np.testing.assert_allclose(low, np.sqrt(np.expm1(19.9 / 2 * 1e-10 + 0.1 * 1e-5)), rtol=1e-5)
    # sigma = 1: t solves 19.9 t^2 / 2 + 0.1 t = ln 2; c_noise = 999 t; c_in = 1 / sqrt(2)
    t = (-0.1 + np.sqrt(0.01 + 2 * 19.9 * np.log(2))) / 19.9
    c_skip, c_out, c_in, c_noise = precond.coefficients(vp, jnp.array([1.0]))
    np.testing.assert_allclose([c_skip[0], c_out[0], c_in[0]], [1, -1, 2**-0.5], rtol=1e-6)
    np.testing.assert_allclose(c_noise[0], 999 * t, rtol=1e-5)

    ve = precond.Precond("ve", sigma_min=0.02, sigma_max=100.0)
    c_skip, c_out, c_in, c_noise = precond.coefficients(ve, jnp.array([2.0, 0.2]))
    np.testing.assert_allclose(c_noise, [0.0, np.log(0.1)], rtol=1e-6, atol=1e-7)  # ln(sigma / 2)
    np.testing.assert_allclose(c_out, [2.0, 0.2]) and np.testing.assert_allclose(c_in, 1.0)
    assert precond.supported_levels(ve) == (0.02, 100.0)

    iddpm = precond.Precond("iddpm", C_1=0.001, C_2=0.008, M=1000)
    u = precond.iddpm_levels(1000, 0.001, 0.008)
    bar = lambda j: np.sin(0.5 * np.pi * j / 1000 / 1.008) ** 2
    assert u[1000] == 0 and np.all(np.diff(u) < 0)
    exact = np.zeros(1001)  # the recursion in float64
    for j in range(1000, 0, -1):
        exact[j - 1] = np.sqrt((exact[j] ** 2 + 1) / max(bar(j - 1) / bar(j), 0.001) - 1)
    # EDM computes it in float32 (and so do we, to match its table): where alpha_bar's ratio is
    # within 1e-4 of 1 (the lowest levels) that costs up to 5e-4 relative, elsewhere < 1e-5
    np.testing.assert_allclose(u[:-1], exact[:-1], rtol=1e-3)
    np.testing.assert_allclose(u[:900], exact[:900], rtol=2e-5)
    assert precond.supported_levels(iddpm) == (float(u[999]), float(u[0]))
    # the level nearest each sigma: c_noise = M - 1 - j, and round_sigma gives u_j
    sigma = jnp.array([u[999], u[500] * 1.001, 0.5 * (u[10] + u[11]) * 0.999])
    c_skip, c_out, c_in, c_noise = precond.coefficients(iddpm, sigma)
    np.testing.assert_array_equal(c_noise, [0, 499, 999 - 11])
    np.testing.assert_allclose(precond.round_sigma(iddpm, sigma), u[[999, 500, 11]], rtol=1e-7)
    np.testing.assert_allclose(c_in, 1 / np.sqrt(np.asarray(sigma) ** 2 + 1), rtol=1e-6)


def test_an_iddpm_denoiser_reads_the_first_half_of_the_networks_channels():
    iddpm = precond.Precond("iddpm")
    assert precond.output_channels(iddpm, 3) == 6
    assert precond.output_channels(precond.Precond("vp"), 3) == 3
    x = jnp.ones((1, 2, 2, 1))
    raw = lambda x_in, c_noise: jnp.concatenate([jnp.full_like(x_in, 2.0), x_in * 0 + 7.0], -1)
    out = precond.denoiser(raw, iddpm)(x, jnp.array([0.5]))
    np.testing.assert_allclose(out, 1 - 0.5 * 2.0)  # x + c_out F[..., :1], c_out = -sigma
