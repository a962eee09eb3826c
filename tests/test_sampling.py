"""Samplers against closed-form denoisers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import gaussian_denoiser

from ambient_jax.diffusion import sampling, schedules

MU, STD, SHAPE = 0.4, 0.7, (4096, 2, 2, 2)


@pytest.mark.parametrize(
    "sampler, kwargs, tol",
    [
        # Heun is second order: 18 steps leave about 5% error on this narrow Gaussian, 40 steps 1%.
        (sampling.edm_sampler, dict(num_steps=40), 0.02),
        (
            sampling.edm_sampler,
            dict(num_steps=40, s_churn=10.0, s_min=0.05, s_max=50.0, key=jax.random.key(1)),
            0.04,
        ),
        (sampling.edm_euler_sampler, dict(num_steps=64), 0.05),
        (sampling.ddim_vp_sampler, dict(num_steps=64), 0.05),
    ],
)
def test_samplers_reproduce_a_gaussian_from_its_exact_denoiser(sampler, kwargs, tol):
    latents = jax.random.normal(jax.random.key(0), SHAPE)
    run = jax.jit(lambda z: sampler(gaussian_denoiser(MU, STD), z, **kwargs))
    x = np.asarray(run(latents))
    assert abs(x.mean() - MU) < 0.02
    assert abs(x.std() / STD - 1) < tol, x.std()


def test_edm_sampler_makes_2n_minus_1_denoiser_calls():
    calls = []

    def denoise(x, sigma):
        jax.debug.callback(lambda: calls.append(1))
        return gaussian_denoiser(MU, STD)(x, sigma)

    jax.block_until_ready(sampling.edm_sampler(denoise, jnp.zeros((2, 1, 1, 1)), num_steps=7))
    jax.effects_barrier()
    assert len(calls) == 2 * 7 - 1
    calls.clear()
    jax.block_until_ready(sampling.edm_euler_sampler(denoise, jnp.zeros((2, 1, 1, 1)), num_steps=7))
    jax.effects_barrier()
    assert len(calls) == 7


def test_edm_grid_matches_the_formula():
    grid = np.asarray(schedules.edm_sigma_grid(18, 0.002, 80.0, 7.0))
    assert grid.shape == (19,) and grid[-1] == 0
    np.testing.assert_allclose(grid[[0, 17]], [80.0, 0.002], rtol=1e-5)
    i = 9
    expected = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    np.testing.assert_allclose(grid[i], expected, rtol=1e-5)
    assert np.all(np.diff(grid) < 0)


def test_stochastic_sampling_needs_a_key():
    with pytest.raises(ValueError, match="key"):
        sampling.edm_sampler(gaussian_denoiser(MU, STD), jnp.zeros((1, 1, 1, 1)), s_churn=1.0)
