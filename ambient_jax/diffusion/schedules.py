"""Noise processes shared by the losses and the samplers.

Two parameterisations of the same Gaussian corruption are used in this project:

* VE / EDM (Karras et al. 2022, eq. 1; the form the paper's code trains with):
      x_sigma = x0 + sigma * n,                 sigma in [0, inf)
* VP (the lecture's notation, section 5):
      x_t = sqrt(1 - s_t^2) * x0 + s_t * z,     s_t in [0, 1)

They are one process up to a per-level scale (Karras et al. 2022, section 2 and appendix B):
      s = sigma / sqrt(1 + sigma^2),   x_vp = x_ve / sqrt(1 + sigma^2) = sqrt(1 - s^2) x_ve.

The VP time axis t in [eps_t, 1] uses the variance-preserving SDE of Song et al. 2021
(beta_min = 0.1, beta_d = 19.9): s_t^2 = 1 - exp(-(beta_d t^2 / 2 + beta_min t)), the same
schedule EDM's VP preconditioning uses.

The EDM sampler grid (Karras et al. 2022, eq. 5):
      sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho,  sigma_N = 0.
"""

import jax
import jax.numpy as jnp

VP_BETA_MIN = 0.1
VP_BETA_D = 19.9
VP_T_MIN = 1e-5  # smallest diffusion time, as in EDM's VP set-up
VP_T_MAX = 1.0


def ve_sigma_to_vp(sigma: float | jax.Array) -> jax.Array:
    """VE noise level sigma -> VP noise level s = sigma / sqrt(1 + sigma^2)."""
    return sigma / jnp.sqrt(1.0 + sigma**2)


def vp_to_ve_sigma(s: float | jax.Array) -> jax.Array:
    """VP noise level s -> VE noise level sigma = s / sqrt(1 - s^2)."""
    return s / jnp.sqrt(1.0 - s**2)


def ve_to_vp_x(x_ve: jax.Array, sigma: float | jax.Array) -> jax.Array:
    """Rescale a VE state at level sigma into the VP state at the same level."""
    return x_ve / jnp.sqrt(1.0 + expand_rows(sigma, x_ve) ** 2)


def vp_to_ve_x(x_vp: jax.Array, s: float | jax.Array) -> jax.Array:
    """Rescale a VP state at level s into the VE state at the same level."""
    return x_vp / jnp.sqrt(1.0 - expand_rows(s, x_vp) ** 2)


def vp_s_of_t(
    t: float | jax.Array, beta_min: float = VP_BETA_MIN, beta_d: float = VP_BETA_D
) -> jax.Array:
    """s_t of the VP SDE at time t: s_t^2 = 1 - exp(-(beta_d t^2 / 2 + beta_min t))."""
    return jnp.sqrt(-jnp.expm1(-(0.5 * beta_d * t**2 + beta_min * t)))


def vp_t_of_s(
    s: float | jax.Array, beta_min: float = VP_BETA_MIN, beta_d: float = VP_BETA_D
) -> jax.Array:
    """Inverse of vp_s_of_t: the time at which the VP noise level equals s."""
    log_term = -jnp.log1p(-(s**2))  # beta_d t^2 / 2 + beta_min t
    return (jnp.sqrt(beta_min**2 + 2.0 * beta_d * log_term) - beta_min) / beta_d


def edm_sigma_grid(
    num_steps: int = 18, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0
) -> jax.Array:
    """The EDM sampler's noise levels, num_steps of them, plus a final 0 (length num_steps+1)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    i = jnp.arange(num_steps, dtype=jnp.float32)
    denom = max(num_steps - 1, 1)
    inv_rho = 1.0 / rho
    sigmas = (sigma_max**inv_rho + i / denom * (sigma_min**inv_rho - sigma_max**inv_rho)) ** rho
    return jnp.concatenate([sigmas, jnp.zeros((1,), jnp.float32)])


def expand_rows(v: float | jax.Array, x: jax.Array) -> jax.Array:
    """Broadcast a per-example [B] (or scalar) level against an x of shape [B, ...]."""
    v = jnp.asarray(v, dtype=x.dtype)
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))
