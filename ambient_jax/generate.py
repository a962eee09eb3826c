"""Draw images from a trained network: the configured sampler over the EMA parameters, in batches.

Latents for sample j come from fold_in(key(seed), j), so sample j is the same image whatever
the batch size.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ambient_jax import files, nets, parallel, sampling
from ambient_jax.data import to_uint8
from ambient_jax.precond import edm_denoiser


def build_network(config, channels):
    overrides = dict(config.model.overrides.to_dict()) if hasattr(config.model.overrides, "to_dict") else dict(config.model.overrides)
    overrides.setdefault("compute_dtype", compute_dtype(config.model.get("compute_dtype", "auto")))
    if config.model.get("remat", False):
        overrides.setdefault("remat", True)
    return nets.build_model(config.model.preset, channels, split_sigma=split_sigma(config),
                            low_preset=config.model.get("split_low_preset", ""), **overrides)


def split_sigma(config):
    """model.split_sigma: -1 splits at the ambient branch's start, max(loss.sigma_switch,
    loss.sigma_tn), for the ddpm objective too (so both objectives train the same network); a
    positive value splits at that sigma; 0 = one network."""
    value = float(config.model.get("split_sigma", 0.0))
    if value < 0:
        return max(float(config.loss.get("sigma_switch", 0.0)), float(config.loss.sigma_tn))
    return value


def compute_dtype(name):
    """"auto" -> bfloat16 on GPU/TPU (their matmul units run bf16 several times faster), else float32."""
    if name == "auto":
        return "bfloat16" if jax.default_backend() in ("gpu", "tpu") else "float32"
    return name


def image_shape(config):
    return (config.data.resolution, config.data.resolution, config.data.channels)


def make_sample_fn(config, model, mesh=None):
    """A jitted fn(params, latents) -> images in [-1, 1], with the configured sampler.

    With a mesh the latents (and images) are sharded over its "data" axis and the parameters
    replicated: every device draws its share of the batch.
    """
    sampler = sampling.SAMPLERS[config.sample.sampler]

    def sample(params, latents):
        raw = functools.partial(model.apply, params, train=False)
        denoise = edm_denoiser(raw, config.loss.sigma_data)
        return sampler(denoise, latents, num_steps=config.sample.num_steps)

    if mesh is None:
        return jax.jit(sample)
    repl, rows = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    return jax.jit(sample, in_shardings=(repl, rows), out_shardings=rows)


def latents_for(seed, first, count, shape):
    base = jax.random.key(seed)
    keys = jax.vmap(lambda j: jax.random.fold_in(base, j))(jnp.arange(first, first + count, dtype=jnp.uint32))
    return jax.vmap(lambda k: jax.random.normal(k, shape))(keys)


def generate(config, model, params, num_samples, seed, batch_size=None, sample_fn=None, progress=None, mesh=None):
    """num_samples images as uint8 [N, H, W, C], in order, split over the mesh's devices (and hosts)."""
    mesh = mesh or parallel.make_mesh(config.parallel)
    sample_fn = sample_fn or make_sample_fn(config, model, mesh)
    batch_size = batch_size or config.sample.batch_size
    batch_size = -(-batch_size // mesh.size) * mesh.size  # a multiple of the device count
    if jax.process_count() == 1:
        params = jax.device_put(params, parallel.replicated(mesh))
    shape = image_shape(config)
    out = []
    for first in range(0, num_samples, batch_size):
        count = min(batch_size, num_samples - first)
        latents = np.asarray(latents_for(seed, first, batch_size, shape))  # fixed batch shape: one compile
        rows = parallel.global_batch(latents[_process_rows(batch_size)], mesh)
        out.append(to_uint8(parallel.to_host(sample_fn(params, rows))[:count]))
        if progress:
            progress(first + count, num_samples)
    return np.concatenate(out)


def _process_rows(batch_size):
    """The rows of a global batch that this process feeds (all of them on one host)."""
    per_process = batch_size // jax.process_count()
    return slice(jax.process_index() * per_process, (jax.process_index() + 1) * per_process)


def tile(images_uint8, cols=None):
    """uint8 [N, H, W, C] images -> one uint8 [rows (H + 2) + 2, cols (W + 2) + 2, C] grid, white gaps."""
    n, h, w, c = images_uint8.shape
    cols = cols or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    grid = np.full((rows * (h + 2) + 2, cols * (w + 2) + 2, c), 255, np.uint8)
    for i, img in enumerate(images_uint8):
        r, col = divmod(i, cols)
        grid[2 + r * (h + 2) : 2 + r * (h + 2) + h, 2 + col * (w + 2) : 2 + col * (w + 2) + w] = img
    return grid


def save_grid(images_uint8, path, cols=None):
    """Tile uint8 [N, H, W, C] images into one PNG (atomically)."""
    from PIL import Image

    h, c = images_uint8.shape[1], images_uint8.shape[3]
    grid = tile(images_uint8, cols)
    scale = max(1, 64 // h)  # small digits are unreadable at 1:1
    picture = Image.fromarray(grid[..., 0] if c == 1 else grid)
    if scale > 1:
        picture = picture.resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.Resampling.NEAREST)
    files.save_png(picture, path)
