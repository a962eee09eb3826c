"""EDM preconditioning (Karras et al. 2022, section 5 and Table 1, "EDM" column).

A raw network F is wrapped into a denoiser that estimates x0 from x = x0 + sigma n:

    D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma))
    c_skip  = sd^2 / (sigma^2 + sd^2)
    c_out   = sigma sd / sqrt(sigma^2 + sd^2)
    c_in    = 1 / sqrt(sigma^2 + sd^2)
    c_noise = ln(sigma) / 4

with sd = sigma_data = 0.5 for data scaled to [-1, 1]. The scalings keep F's input and
training target at unit variance for every sigma.
"""

import functools
import typing
from typing import Any, Callable

import jax
import jax.numpy as jnp

from ambient_jax.diffusion import schedules
from ambient_jax.diffusion.schedules import expand_rows

SIGMA_DATA = 0.5

# raw_net(x_in [B,H,W,C], c_noise [B]) -> F; denoise(x [B,H,W,C], sigma [B] or scalar) -> x0_hat
RawNet = Callable[[jax.Array, jax.Array], jax.Array]
Denoiser = Callable[[jax.Array, jax.Array], jax.Array]


def edm_coefficients(
    sigma: float | jax.Array, sigma_data: float = SIGMA_DATA
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(c_skip, c_out, c_in, c_noise) for noise levels sigma (any shape)."""
    sigma = jnp.asarray(sigma)
    total = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / total
    c_out = sigma * sigma_data / jnp.sqrt(total)
    c_in = 1.0 / jnp.sqrt(total)
    c_noise = jnp.log(sigma) / 4.0
    return c_skip, c_out, c_in, c_noise


def edm_denoiser(raw_net: RawNet, sigma_data: float = SIGMA_DATA) -> Denoiser:
    """Turn raw_net(x_in [B,H,W,C], c_noise [B]) -> F into denoise(x, sigma [B]) -> x0_hat.

    raw_net is usually `functools.partial(model.apply, params, ...)`; the returned callable
    is what the losses and samplers take.
    """

    def denoise(x, sigma):
        sigma = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), (x.shape[0],))
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, sigma_data)
        f = raw_net(expand_rows(c_in, x) * x, c_noise)
        return expand_rows(c_skip, x) * x + expand_rows(c_out, x) * f.astype(x.dtype)

    return denoise


def network_denoiser(
    model: Any, params: Any, sigma_data: float = SIGMA_DATA, class_labels: Any = None
) -> Denoiser:
    """D(x, sigma) of a network (a flax module) with these parameters, at inference
    (train=False): what sampling, tracking and the diagnosis evaluate. class_labels [B, classes]
    (one-hot): the classes a class-conditional network draws."""
    labels = {} if class_labels is None else {"class_labels": class_labels}
    # (flax types apply as possibly returning mutated variables; this call asks for none)
    raw = typing.cast(RawNet, functools.partial(model.apply, params, train=False, **labels))
    return edm_denoiser(raw, sigma_data)


def vp_denoiser(denoise: Denoiser) -> Denoiser:
    """The lecture's h(x_t, s_t) -> x0 estimate from a VE denoiser D: h(x, s) = D(x / sqrt(1-s^2),
    sigma(s))."""

    def h(x_vp, s):
        return denoise(schedules.vp_to_ve_x(x_vp, s), schedules.vp_to_ve_sigma(s))

    return h
