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
from ambient_jax.diffusion import precond, sampling
from ambient_jax.types import Config, PyTree


def make_sample_fn(
    config: Config, model: nn.Module, mesh: jax.sharding.Mesh | None = None
) -> Callable[..., jax.Array]:
    """A jitted fn(params, latents) -> images in [-1, 1], with the configured sampler
    (fn(params, latents, one_hot_labels) for a class-conditional network).

    With a mesh the latents (and images) are sharded over its "data" axis and the parameters
    replicated: every device draws its share of the batch.
    """
    sampler = sampling.SAMPLERS[config.sample.sampler]
    preconditioning = precond.from_config(config)
    levels = sampling.grid_for(config.sample.sampler, preconditioning)

    def sample(params, latents, class_labels=None):
        denoise = precond.network_denoiser(model, params, preconditioning, class_labels)
        return sampler(denoise, latents, num_steps=config.sample.num_steps, **levels)

    if mesh is None:
        return jax.jit(sample)
    repl, rows = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    # a class-conditional network's fn takes the labels too: fn(params, latents, one_hot)
    shardings = (repl, rows, rows) if label_dim(config) else (repl, rows)
    return jax.jit(sample, in_shardings=shardings, out_shardings=rows)


def label_dim(config: Config) -> int:
    """How many classes the run's network is conditioned on (0: unconditional)."""
    return int(config.model.overrides.get("label_dim") or 0)


def classes_for(seed: int, first: int, count: int, classes: int, fixed: int | None) -> np.ndarray:
    """The class of samples first .. first + count - 1: `fixed`, or drawn uniformly, each from
    its own key (seed, index), so that a sample's class does not depend on the batching."""
    if fixed is not None:
        return np.full(count, fixed, np.int32)
    base = jax.random.key(seed)
    keys = jax.vmap(lambda j: jax.random.fold_in(jax.random.fold_in(base, j), 1))(
        jnp.arange(first, first + count, dtype=jnp.uint32)
    )
    return np.asarray(jax.vmap(lambda k: jax.random.randint(k, (), 0, classes))(keys), np.int32)


def check_class(config: Config, class_label: int | None) -> None:
    """ValueError for a class a run cannot draw (an unconditional run, or out of range)."""
    classes = label_dim(config)
    if class_label is not None and not classes:
        raise ValueError("--class: this run's network is not class-conditional")
    if class_label is not None and not 0 <= class_label < classes:
        raise ValueError(f"--class must lie in [0, {classes}) for this run, got {class_label}")


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
    sample_fn: Callable[..., jax.Array] | None = None,
    progress: Callable[[int, int], None] | None = None,
    mesh: jax.sharding.Mesh | None = None,
    class_label: int | None = None,
) -> np.ndarray:
    """num_samples images as uint8 [N, H, W, C], in order, split over the mesh's devices (and
    hosts). A class-conditional network draws class `class_label`, or each sample's class
    uniformly (classes_for)."""
    check_class(config, class_label)
    classes = label_dim(config)
    mesh = mesh or parallel.make_mesh(config.parallel)
    sample_fn = sample_fn or make_sample_fn(config, model, mesh)
    # no batch larger than the request: 8 samples are not drawn in a batch of 500
    batch_size = min(batch_size or config.sample.batch_size, num_samples)
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
        local = parallel.process_rows(batch_size)
        rows = parallel.global_batch(latents[local], mesh)
        if classes:
            drawn = classes_for(seed, first, batch_size, classes, class_label)
            one_hot = np.eye(classes, dtype=np.float32)[drawn]
            labels = parallel.global_batch(one_hot[local], mesh)
            images = sample_fn(params, rows, labels)
        else:
            images = sample_fn(params, rows)
        out.append(to_uint8(parallel.to_host(images)[:count]))
        if progress:
            progress(first + count, num_samples)
    return np.concatenate(out)
