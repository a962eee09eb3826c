"""Draw images from a trained network: the configured sampler over the EMA parameters, in batches.

Latents for sample j come from fold_in(key(seed), j), so sample j is the same image whatever
the batch size.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from ambient_jax import nets, sampling
from ambient_jax.data import to_uint8
from ambient_jax.precond import edm_denoiser


def build_network(config, channels):
    overrides = dict(config.model.overrides.to_dict()) if hasattr(config.model.overrides, "to_dict") else dict(config.model.overrides)
    overrides.setdefault("compute_dtype", config.model.get("compute_dtype", "float32"))
    return nets.build_model(config.model.preset, channels, **overrides)


def image_shape(config):
    return (config.data.resolution, config.data.resolution, config.data.channels)


def make_sample_fn(config, model):
    """A jitted fn(params, latents) -> images in [-1, 1], with the configured sampler."""
    sampler = sampling.SAMPLERS[config.sample.sampler]

    @jax.jit
    def sample(params, latents):
        raw = functools.partial(model.apply, params, train=False)
        denoise = edm_denoiser(raw, config.loss.sigma_data)
        return sampler(denoise, latents, num_steps=config.sample.num_steps)

    return sample


def latents_for(seed, first, count, shape):
    base = jax.random.key(seed)
    keys = jax.vmap(lambda j: jax.random.fold_in(base, j))(jnp.arange(first, first + count, dtype=jnp.uint32))
    return jax.vmap(lambda k: jax.random.normal(k, shape))(keys)


def generate(config, model, params, num_samples, seed, batch_size=None, sample_fn=None, progress=None):
    """num_samples images as uint8 [N, H, W, C]."""
    sample_fn = sample_fn or make_sample_fn(config, model)
    batch_size = batch_size or config.sample.batch_size
    shape = image_shape(config)
    out = []
    for first in range(0, num_samples, batch_size):
        count = min(batch_size, num_samples - first)
        latents = latents_for(seed, first, batch_size, shape)  # fixed batch shape: one compile
        out.append(to_uint8(np.asarray(sample_fn(params, latents))[:count]))
        if progress:
            progress(first + count, num_samples)
    return np.concatenate(out)


def save_grid(images_uint8, path, cols=None):
    """Tile uint8 [N, H, W, C] images into one PNG (atomically)."""
    from PIL import Image

    n, h, w, c = images_uint8.shape
    cols = cols or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    grid = np.full((rows * (h + 2) + 2, cols * (w + 2) + 2, c), 255, np.uint8)
    for i, img in enumerate(images_uint8):
        r, col = divmod(i, cols)
        grid[2 + r * (h + 2) : 2 + r * (h + 2) + h, 2 + col * (w + 2) : 2 + col * (w + 2) + w] = img
    scale = max(1, 256 // max(grid.shape[:2]))  # small digits are unreadable at 1:1
    picture = Image.fromarray(grid[..., 0] if c == 1 else grid)
    if scale > 1:
        picture = picture.resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.Resampling.NEAREST)
    tmp = f"{path}.tmp{os.getpid()}.png"
    picture.save(tmp)
    os.replace(tmp, path)
