"""How far a denoiser looks at each noise level, and the crop-size-to-level map of Ambient
Diffusion Omni's crops annotation (Daras et al. 2025) measured from it, not copied from its table.

An image whose w x w crops pass as the target's may train at the levels where the denoiser's
output at a pixel is decided by the w x w window around it: there it cannot tell the image's
patches from the target's. How much the window decides is the windowed globality

    G_w(sigma) = E ||D(c)_P - D(x_a)_P||^2 / E ||D(x_b)_P - D(x_a)_P||^2,

the per-level diagnosis' measure (diagnose.globality) with a central 2 x 2 patch P and a margin
of (w - 2) / 2 pixels, so that the window kept from x_a in the chimera c is w x w: 0 when the
window alone decides P, about 1 when the pixels outside it move P as much as a whole other image.
The map gives crop size w the largest level of the grid up to which G_w stays <= tau; a crop as
large as the image has G = 0 and the level inf (an image that passes whole is the target's).

Which denoiser: the exact denoiser of the Gaussian with the clean training images' mean and
covariance (gaussian_denoiser), the data's own answer to "how far do pixels inform each other at
this noise level", in closed form and from the training images alone. The training set's exact
denoiser D*_S is no help here: it snaps to a training image wherever it can, so it is global at
every level by construction (diagnose's reference row shows it), and a trained network's answer
depends on how much it has copied (docs/mixed_quality.md measures the digits U-Net's as well).
"""

import jax
import jax.numpy as jnp
import numpy as np

from ambient_jax.diffusion.precond import Denoiser
from ambient_jax.eval import diagnose

PATCH = 2  # the central patch whose output is watched: 2 x 2 pixels (even crop sizes)
TAU = 0.1  # "decided by the window": at most a tenth of a whole other image's effect


def gaussian_denoiser(images: np.ndarray, ridge: float = 1e-4) -> Denoiser:
    """D(x, sigma) = mu + C (C + sigma^2 I)^-1 (x - mu) for the Gaussian N(mu, C + ridge I) fitted
    to `images` [N, H, W, C] (its exact denoiser, E[x0 | x0 + sigma n]), through C's eigenbasis."""
    flat = np.asarray(images, np.float64).reshape(len(images), -1)
    mean = flat.mean(axis=0)
    variances, basis = np.linalg.eigh(np.cov(flat, rowvar=False) + ridge * np.eye(flat.shape[1]))
    mean_j, basis_j = jnp.asarray(mean, jnp.float32), jnp.asarray(basis, jnp.float32)
    variances_j = jnp.asarray(np.maximum(variances, 0.0), jnp.float32)

    def denoise(x: jax.Array, sigma: jax.Array) -> jax.Array:
        centred = x.reshape(x.shape[0], -1) - mean_j
        gain = variances_j / (variances_j + jnp.square(sigma)[:, None])  # [B, D]
        out = ((centred @ basis_j) * gain) @ basis_j.T + mean_j
        return out.reshape(x.shape)

    return denoise


def window_globality(
    denoise: Denoiser, images: np.ndarray, sizes: tuple[int, ...], sigmas: np.ndarray, seed: int = 0
) -> dict[int, list[float]]:
    """G_w(sigma) of the module docstring for each crop size w (even, 4 .. the image's side) at
    each level, on the pairs (images[j], images[j + 1]), each with its own noise
    (diagnose.globality)."""
    side = images.shape[1]
    for w in sizes:
        if w % 2 or not PATCH <= w <= side:
            raise ValueError(
                f"crop sizes must be even, from {PATCH} to the image's {side}: got {w}"
            )
    key = jax.random.key(seed)
    return {
        w: diagnose.globality(denoise, images, sigmas, key, patch=PATCH, margin=(w - PATCH) // 2)
        for w in sizes
    }


def crop_levels(
    globality: dict[int, list[float]], sigmas: np.ndarray, side: int, tau: float = TAU
) -> dict[int, float]:
    """The map: crop size -> the largest level of `sigmas` (ascending) up to which G_w <= tau
    (0 when it exceeds tau at the lowest level already); inf for a crop of the whole image."""
    levels = {}
    for w, g in globality.items():
        if w >= side:
            levels[w] = float("inf")
            continue
        local = np.asarray(g) <= tau
        # the first level where G exceeds tau ends the range; every level below it is local
        first_global = int(np.argmin(local)) if not local.all() else len(local)
        levels[w] = float(sigmas[first_global - 1]) if first_global else 0.0
    return levels
