"""Draw images from a trained network: the configured sampler over the EMA parameters, in batches.

Latents for sample j come from fold_in(key(seed), j), so sample j is the same image whatever
the batch size.
"""

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ambient_jax import config as config_lib
from ambient_jax import parallel
from ambient_jax.data import to_uint8
from ambient_jax.diffusion import sampling
from ambient_jax.diffusion.precond import network_denoiser
from ambient_jax.types import Config, PyTree


def make_sample_fn(
    config: Config, model: nn.Module, mesh: jax.sharding.Mesh | None = None
) -> Callable[[PyTree, jax.Array], jax.Array]:
    """A jitted fn(params, latents) -> images in [-1, 1], with the configured sampler.

    With a mesh the latents (and images) are sharded over its "data" axis and the parameters
    replicated: every device draws its share of the batch.
    """
    sampler = sampling.SAMPLERS[config.sample.sampler]

    def sample(params, latents):
        denoise = network_denoiser(model, params, config.loss.sigma_data)
        return sampler(denoise, latents, num_steps=config.sample.num_steps)

    if mesh is None:
        return jax.jit(sample)
    repl, rows = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    return jax.jit(sample, in_shardings=(repl, rows), out_shardings=rows)


def latents_for(seed: int, first: int, count: int, shape: tuple[int, ...]) -> jax.Array:
    base = jax.random.key(seed)
    keys = jax.vmap(lambda j: jax.random.fold_in(base, j))(
        jnp.arange(first, first + count, dtype=jnp.uint32)
    )
    return jax.vmap(lambda k: jax.random.normal(k, shape))(keys)


def generate(
    config: Config,
    model: nn.Module,
    params: PyTree,
    num_samples: int,
    seed: int,
    batch_size: int | None = None,
    sample_fn: Callable | None = None,
    progress: Callable[[int, int], None] | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> np.ndarray:
    """num_samples images as uint8 [N, H, W, C], in order, split over the mesh's devices (and
    hosts)."""
    mesh = mesh or parallel.make_mesh(config.parallel)
    sample_fn = sample_fn or make_sample_fn(config, model, mesh)
    batch_size = batch_size or config.sample.batch_size
    batch_size = parallel.round_up_to_devices(batch_size, mesh)
    if jax.process_count() == 1:
        params = jax.device_put(params, parallel.replicated(mesh))
    shape = config_lib.image_shape(config)
    out = []
    for first in range(0, num_samples, batch_size):
        count = min(batch_size, num_samples - first)
        latents = np.asarray(
            latents_for(seed, first, batch_size, shape)
        )  # fixed batch shape: one compile
        rows = parallel.global_batch(latents[parallel.process_rows(batch_size)], mesh)
        out.append(to_uint8(parallel.to_host(sample_fn(params, rows))[:count]))
        if progress:
            progress(first + count, num_samples)
    return np.concatenate(out)
