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
