"""Corrupted training images for data of mixed quality (Daras et al. 2025, Ambient Diffusion Omni):
a few clean images and many poor ones, each poor one with the noise level sigma_tn above which
its corruption no longer matters.

The recipe for the embedded digits: besides the clean training subset, `count` other source
images, chosen by a seed among those outside it (so that `keep_heldout` images stay held out for
evaluation), are either noised (additive Gaussian noise of std `level` in the [-1, 1] pixel
scale: their sigma_tn is `level`, known) or blurred (a Gaussian of std `level` pixels: not
additive noise, so their sigma_tn has to be estimated). The noise of image i is keyed by
(seed, its source index), so a corrupted image is the same in every run.
"""

import numpy as np

from ambient_jax.data.images import DataError

KINDS = ("noise", "blur")


def gaussian_kernel(width):
    """The normalised 1-d Gaussian of std `width` pixels, radius ceil(3 width)."""
    radius = max(1, int(np.ceil(3 * width)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / width) ** 2)
    return taps / taps.sum()


def gaussian_blur(images, width):
    """[N, H, W, C] blurred by a Gaussian of std `width` pixels (separable, edges reflected)."""
    if width <= 0:
        return np.array(images, np.float32)
    kernel = gaussian_kernel(width)
    radius = len(kernel) // 2
    out = np.asarray(images, np.float64)
    for axis in (1, 2):
        pad = [(0, 0)] * 4
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="reflect")
        size = out.shape[axis]
        out = sum(
            k * np.take(padded, np.arange(i, i + size), axis=axis) for i, k in enumerate(kernel)
        )
    return out.astype(np.float32)


def image_noise(seed, source_indices, shape):
    """N(0, I) of `shape` for each source index, keyed by (seed, index)."""
    return np.stack(
        [np.random.RandomState([seed, int(i)]).randn(*shape) for i in source_indices]
    ).astype(np.float32)


def corrupt(images, source_indices, kind, level, seed):
    """The corrupted versions of `images` (source indices given, for their noise keys)."""
    if kind not in KINDS:
        raise DataError(f"data.corrupt_kind must be one of {KINDS}, got {kind!r}")
    if level <= 0:
        raise DataError(f"data.corrupt_level must be > 0, got {level}")
    if kind == "noise":
        return images + level * image_noise(seed, source_indices, images.shape[1:])
    return gaussian_blur(images, level)


def choose_corrupted(num_images, train_indices, count, keep_heldout, seed):
    """Sorted source indices of `count` images outside the training subset, chosen by `seed`,
    leaving at least `keep_heldout` images held out."""
    others = np.setdiff1d(np.arange(num_images), train_indices)
    if count > len(others) - keep_heldout:
        raise DataError(
            f"data.corrupt_count = {count} leaves fewer than {keep_heldout} of the source's "
            f"{len(others)} images outside the training subset held out: lower it to at most "
            f"{max(len(others) - keep_heldout, 0)}"
        )
    return np.sort(np.random.RandomState(seed).permutation(others)[:count])
