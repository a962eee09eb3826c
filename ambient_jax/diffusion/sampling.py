"""Samplers over a denoiser D(x, sigma) -> x0 estimate (VE / EDM convention).

* `edm_sampler`: Karras et al. 2022, Algorithm 2 (Heun's 2nd-order method on the probability
  flow ODE dx/dsigma = (x - D(x, sigma)) / sigma, with optional stochastic "churn"):
      sigma grid from schedules.edm_sigma_grid (rho = 7), x_0 = sigma_max * latents,
      gamma_i = min(S_churn / N, sqrt(2) - 1) if S_min <= sigma_i <= S_max else 0,
      sigma_hat = sigma_i (1 + gamma_i),  x_hat = x_i + sqrt(sigma_hat^2 - sigma_i^2) S_noise z,
      Euler step to sigma_{i+1}, then a Heun correction except on the last step (NFE = 2N - 1).
* `edm_euler_sampler`: the same grid without the Heun correction (NFE = N).
* `ddim_vp_sampler`: deterministic DDIM (Song et al. 2021, eq. 12 with eta = 0) in the lecture's
  VP form, x_T ~ N(0, I) on a uniform time grid of the VP SDE.

All are jit-compatible: the step loop is a lax.fori_loop over a precomputed grid.
"""

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from ambient_jax.checks import need, need_counts
from ambient_jax.diffusion import precond, schedules
from ambient_jax.diffusion.precond import Denoiser, Precond, vp_denoiser
from ambient_jax.types import Config


def edm_sampler(
    denoise: Denoiser,
    latents: jax.Array,
    num_steps: int = 18,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    *,
    heun: bool = True,
    key: jax.Array | None = None,
    s_churn: float = 0.0,
    s_min: float = 0.0,
    s_max: float = float("inf"),
    s_noise: float = 1.0,
    round_sigma: Callable[[jax.Array], jax.Array] | None = None,
) -> jax.Array:
    """EDM sampler; `latents` are N(0, I) and are scaled by sigma_max here. Returns x at sigma = 0.

    `key` is needed only with s_churn > 0 (stochastic sampling). `round_sigma`: the levels a
    network takes (iDDPM's table, precond.round_sigma); the grid and each raised level are
    rounded to them, as EDM's sampler does.
    """
    if s_churn > 0 and key is None:
        raise ValueError("stochastic sampling (s_churn > 0) needs a key")
    sigmas = schedules.edm_sigma_grid(num_steps, sigma_min, sigma_max, rho).astype(latents.dtype)
    if round_sigma is not None:
        sigmas = sigmas.at[:-1].set(round_sigma(sigmas[:-1]))
    batch = latents.shape[0]
    gamma_max = min(s_churn / num_steps, 2**0.5 - 1)

    def velocity(x, sigma):
        return (x - denoise(x, jnp.full((batch,), sigma, x.dtype))) / sigma

    def step(i, x):
        sigma_cur, sigma_next = sigmas[i], sigmas[i + 1]
        if s_churn > 0:
            gamma = jnp.where((sigma_cur >= s_min) & (sigma_cur <= s_max), gamma_max, 0.0)
            sigma_hat = sigma_cur * (1 + gamma)
            z = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
            if round_sigma is None:
                # sqrt(sigma_hat^2 - sigma_cur^2), written so that rounding cannot make it < 0
                x = x + sigma_cur * jnp.sqrt(gamma * (2 + gamma)) * s_noise * z
            else:
                sigma_hat = round_sigma(sigma_hat)
                raised = jnp.sqrt(jnp.maximum(sigma_hat**2 - sigma_cur**2, 0.0))
                x = x + raised * s_noise * z
        else:
            sigma_hat = sigma_cur
        d_cur = velocity(x, sigma_hat)
        x_next = x + (sigma_next - sigma_hat) * d_cur
        if heun:
            # Heun correction on every step but the last (sigma_next = 0).
            def correct(_):
                d_prime = velocity(x_next, sigma_next)
                return x + (sigma_next - sigma_hat) * (0.5 * d_cur + 0.5 * d_prime)

            x_next = jax.lax.cond(i < num_steps - 1, correct, lambda _: x_next, None)
        return x_next

    return jax.lax.fori_loop(0, num_steps, step, latents * sigmas[0])


# First-order (Euler) variant of edm_sampler on the same sigma grid.
edm_euler_sampler = functools.partial(edm_sampler, heun=False)


def ddim_vp_sampler(
    denoise: Denoiser,
    latents: jax.Array,
    num_steps: int = 50,
    t_min: float = schedules.VP_T_MIN,
    t_max: float = schedules.VP_T_MAX,
) -> jax.Array:
    """Deterministic DDIM in the lecture's VP form; latents ~ N(0, I) are x_T. Returns x at t_min.

    x0^ = h(x_t, s_t), eps^ = (x_t - sqrt(1 - s_t^2) x0^) / s_t,
    x_t' = sqrt(1 - s_t'^2) x0^ + s_t' eps^; the last step returns x0^ itself.
    """
    h = vp_denoiser(denoise)
    times = jnp.linspace(t_max, t_min, num_steps + 1, dtype=latents.dtype)
    levels = schedules.vp_s_of_t(times)
    batch = latents.shape[0]

    def step(i, x):
        s_cur, s_next = levels[i], levels[i + 1]
        x0_hat = h(x, jnp.full((batch,), s_cur, x.dtype))
        eps_hat = (x - jnp.sqrt(1.0 - s_cur**2) * x0_hat) / s_cur
        return jnp.where(
            i < num_steps - 1, jnp.sqrt(1.0 - s_next**2) * x0_hat + s_next * eps_hat, x0_hat
        )

    # Start from x_T ~ N(0, I): the VP marginal at t_max is N(sqrt(1-s^2) x0, s^2) with s ~ 1.
    return jax.lax.fori_loop(0, num_steps, step, latents)


SAMPLERS = {"edm_heun": edm_sampler, "edm_euler": edm_euler_sampler, "ddim_vp": ddim_vp_sampler}


def grid_for(sampler: str, preconditioning: Precond) -> dict[str, Any]:
    """The EDM samplers' level range clipped to what the network was trained on, and iDDPM's
    rounding (EDM's generate.py: max(0.002, net.sigma_min), min(80, net.sigma_max),
    net.round_sigma); {} for the EDM preconditioning and for the DDIM sampler."""
    if preconditioning.kind == "edm" or sampler == "ddim_vp":
        return {}
    low, high = precond.supported_levels(preconditioning)
    grid: dict[str, Any] = dict(sigma_min=max(0.002, low), sigma_max=min(80.0, high))
    if preconditioning.kind == "iddpm":
        grid["round_sigma"] = functools.partial(precond.round_sigma, preconditioning)
    return grid


def check_config(sample: Config) -> None:
    """config.sample values the samplers cannot run with, each named (ValueError)."""
    need(sample.sampler in SAMPLERS, "sample.sampler", f"must be one of {sorted(SAMPLERS)}")
    need_counts("sample", sample, ("num_steps", "batch_size", "num_samples", "grid_size"))
