"""Preconditioning: a raw network F wrapped into a denoiser that estimates x0 from x = x0 + sigma n,

    D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma)),

with the four coefficient sets of EDM (Karras et al. 2022, Table 1; networks.py's
EDMPrecond, VPPrecond, VEPrecond and iDDPMPrecond):

    edm    c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2),
           c_in = 1 / sqrt(sigma^2 + sd^2), c_noise = ln(sigma) / 4        (sd = sigma_data)
    vp     c_skip = 1, c_out = -sigma, c_in = 1 / sqrt(sigma^2 + 1),
           c_noise = (M - 1) t(sigma), t the inverse of sigma(t) = sqrt(exp(beta_d t^2 / 2 +
           beta_min t) - 1)                                 (Song et al. 2021, VP SDE)
    ve     c_skip = 1, c_out = sigma, c_in = 1, c_noise = ln(sigma / 2)   (VE SDE)
    iddpm  c_skip = 1, c_out = -sigma, c_in = 1 / sqrt(sigma^2 + 1),
           c_noise = M - 1 - j, u_j the level of the table u nearest sigma  (Nichol and Dhariwal
           2021; iddpm_levels); F has twice the image's channels (the learned variance) and the
           first half is the noise estimate.

The project trains with edm (sd = 0.5 for data in [-1, 1]): its scalings keep F's input and
target at unit variance at every level. The others are there for networks trained with them.
"""

import dataclasses
import functools
import typing
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ambient_jax.diffusion import schedules
from ambient_jax.diffusion.schedules import expand_rows

SIGMA_DATA = 0.5

# raw_net(x_in [B,H,W,C], c_noise [B]) -> F; denoise(x [B,H,W,C], sigma [B] or scalar) -> x0_hat
RawNet = Callable[[jax.Array, jax.Array], jax.Array]
Denoiser = Callable[[jax.Array, jax.Array], jax.Array]


PRECONDS = ("edm", "vp", "ve", "iddpm")


@dataclasses.dataclass(frozen=True)
class Precond:
    """Which coefficients, with their constants (EDM's defaults; config.model.precond)."""

    kind: str = "edm"
    sigma_data: float = SIGMA_DATA  # edm
    beta_d: float = 19.9  # vp
    beta_min: float = 0.1  # vp
    epsilon_t: float = 1e-5  # vp: the smallest t, which sets the lowest level
    M: int = 1000  # vp and iddpm: the DDPM step count
    sigma_min: float = 0.02  # ve: the range of levels it was trained on
    sigma_max: float = 100.0  # ve
    C_1: float = 0.001  # iddpm
    C_2: float = 0.008  # iddpm


def config_defaults() -> dict[str, Any]:
    """config.model.precond's fields at EDM's defaults (sigma_data is loss.sigma_data)."""
    fields = dataclasses.asdict(Precond())
    del fields["sigma_data"]
    return fields


def from_config(config: Any) -> Precond:
    """The run's preconditioning: config.model.precond, with the loss's sigma_data."""
    fields = dict(config.model.precond)
    kind = fields.pop("kind")
    return Precond(kind, float(config.loss.sigma_data), **fields)


def output_channels(precond: Precond, channels: int) -> int:
    """F's channels for images of `channels`: twice as many under iddpm (the learned variance)."""
    return 2 * channels if precond.kind == "iddpm" else channels


def vp_sigma(precond: Precond, t: Any) -> Any:
    """sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)."""
    return jnp.sqrt(jnp.expm1(0.5 * precond.beta_d * t**2 + precond.beta_min * t))


def vp_time(precond: Precond, sigma: Any) -> Any:
    """t(sigma), the inverse of vp_sigma."""
    b, d = precond.beta_min, precond.beta_d
    return (jnp.sqrt(b**2 + 2 * d * jnp.log1p(sigma**2)) - b) / d


@functools.lru_cache(maxsize=8)
def iddpm_levels(M: int, C_1: float, C_2: float) -> np.ndarray:
    """iDDPMPrecond's table u_0 > ... > u_M = 0 (float32, as EDM computes it): alpha_bar(j) =
    sin^2(pi j / (2 M (C_2 + 1))), u_{j-1} = sqrt((u_j^2 + 1) / max(alpha_bar(j - 1) /
    alpha_bar(j), C_1) - 1)."""
    f = np.float32
    alpha_bar = lambda j: np.sin(f(f(f(0.5 * np.pi) * f(j)) / f(M)) / f(C_2 + 1)) ** 2
    u = np.zeros(M + 1, np.float32)
    for j in range(M, 0, -1):
        ratio = np.maximum(f(alpha_bar(j - 1) / alpha_bar(j)), f(C_1))
        u[j - 1] = np.sqrt(f(f(u[j] ** 2 + 1) / ratio) - 1)
    return u


def level_index(precond: Precond, sigma: jax.Array) -> jax.Array:
    """The index j of the iDDPM level u_j nearest each sigma (the first on a tie, as argmin)."""
    u = jnp.asarray(iddpm_levels(precond.M, precond.C_1, precond.C_2))
    return jnp.argmin(jnp.abs(sigma.astype(jnp.float32)[..., None] - u), axis=-1)


def round_sigma(precond: Precond, sigma: jax.Array) -> jax.Array:
    """The level the network takes nearest sigma: u_j under iddpm, sigma itself otherwise."""
    if precond.kind != "iddpm":
        return sigma
    u = jnp.asarray(iddpm_levels(precond.M, precond.C_1, precond.C_2))
    return u[level_index(precond, sigma)].astype(sigma.dtype)


def supported_levels(precond: Precond) -> tuple[float, float]:
    """The range of levels the network was trained on (EDM's sigma_min, sigma_max), which a
    sampler's grid is clipped to."""
    if precond.kind == "vp":
        return float(vp_sigma(precond, precond.epsilon_t)), float(vp_sigma(precond, 1.0))
    if precond.kind == "ve":
        return precond.sigma_min, precond.sigma_max
    if precond.kind == "iddpm":
        u = iddpm_levels(precond.M, precond.C_1, precond.C_2)
        return float(u[precond.M - 1]), float(u[0])
    return 0.0, float("inf")


def coefficients(
    precond: Precond, sigma: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(c_skip, c_out, c_in, c_noise) of `precond` at levels sigma (any shape)."""
    sigma = jnp.asarray(sigma)
    if precond.kind == "edm":
        return edm_coefficients(sigma, precond.sigma_data)
    one = jnp.ones_like(sigma)
    to_unit = 1.0 / jnp.sqrt(sigma**2 + 1)
    if precond.kind == "vp":
        return one, -sigma, to_unit, (precond.M - 1) * vp_time(precond, sigma)
    if precond.kind == "ve":
        return one, sigma, one, jnp.log(0.5 * sigma)
    if precond.kind == "iddpm":
        index = level_index(precond, sigma).astype(sigma.dtype)
        return one, -sigma, to_unit, precond.M - 1 - index
    raise ValueError(f"model.precond.kind must be one of {PRECONDS}, got {precond.kind!r}")


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


def denoiser(raw_net: RawNet, precond: Precond = Precond()) -> Denoiser:
    """Turn raw_net(x_in [B,H,W,C], c_noise [B]) -> F into denoise(x, sigma [B]) -> x0_hat.

    raw_net is usually `functools.partial(model.apply, params, ...)`; the returned callable
    is what the losses and samplers take. Only F's first C channels enter (iddpm's F has 2C).
    """

    def denoise(x, sigma):
        sigma = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), (x.shape[0],))
        c_skip, c_out, c_in, c_noise = coefficients(precond, sigma)
        f = raw_net(expand_rows(c_in, x) * x, c_noise)[..., : x.shape[-1]]
        return expand_rows(c_skip, x) * x + expand_rows(c_out, x) * f.astype(x.dtype)

    return denoise


def edm_denoiser(raw_net: RawNet, sigma_data: float = SIGMA_DATA) -> Denoiser:
    """denoiser with EDM's coefficients for data of standard deviation sigma_data."""
    return denoiser(raw_net, Precond("edm", sigma_data))


def network_denoiser(
    model: Any, params: Any, precond: Precond = Precond(), class_labels: Any = None
) -> Denoiser:
    """D(x, sigma) of a network (a flax module) with these parameters, at inference
    (train=False): what sampling, tracking and the diagnosis evaluate. class_labels [B, classes]
    (one-hot): the classes a class-conditional network draws."""
    labels = {} if class_labels is None else {"class_labels": class_labels}
    # (flax types apply as possibly returning mutated variables; this call asks for none)
    raw = typing.cast(RawNet, functools.partial(model.apply, params, train=False, **labels))
    return denoiser(raw, precond)


def vp_denoiser(denoise: Denoiser) -> Denoiser:
    """The lecture's h(x_t, s_t) -> x0 estimate from a VE denoiser D: h(x, s) = D(x / sqrt(1-s^2),
    sigma(s))."""

    def h(x_vp, s):
        return denoise(schedules.vp_to_ve_x(x_vp, s), schedules.vp_to_ve_sigma(s))

    return h
