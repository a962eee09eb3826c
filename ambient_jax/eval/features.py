"""Batched, jit-compiled feature extraction sharded over all devices (and hosts).

Images go through in fixed-size batches (the last one padded, so one compile), each batch split
over the mesh's "data" axis; features come back in input order.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ambient_jax import parallel
from ambient_jax.eval import inception


def to_rgb(images: np.ndarray) -> np.ndarray:
    """Grey [N, H, W, 1] -> [N, H, W, 3] by repetition; RGB unchanged."""
    images = np.asarray(images)
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def extract(
    apply_fn: Callable,
    params: dict,
    images: np.ndarray,
    batch_size: int = 64,
    mesh: jax.sharding.Mesh | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """apply_fn(params, batch) -> [b, D] over `images` [N, ...]; returns float32 [N, D]."""
    mesh = mesh or parallel.make_mesh()
    batch_size = parallel.round_up_to_devices(batch_size, mesh)
    repl, rows = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    run = jax.jit(apply_fn, in_shardings=(repl, rows), out_shardings=rows)
    params = jax.device_put(params, repl) if jax.process_count() == 1 else params
    out = []
    for start in range(0, len(images), batch_size):
        batch = np.asarray(images[start : start + batch_size])
        count = len(batch)
        if count < batch_size:
            batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - count, 0)])
        local = batch[parallel.process_rows(batch_size)]
        out.append(parallel.to_host(run(params, parallel.global_batch(local, mesh)))[:count])
        if progress:
            progress(start + count, len(images))
    return np.concatenate(out).astype(np.float32)


def inception_features(
    params: dict, images_uint8: np.ndarray, protocol: str = "edm", **kwargs: Any
) -> np.ndarray:
    """2048-d Inception pool features of uint8 images [N, H, W, 1 or 3] under a named protocol."""
    if protocol not in inception.PROTOCOLS:
        raise ValueError(
            f"Inception protocol must be one of {inception.PROTOCOLS}, got {protocol!r}"
        )
    scale = 1.0 if protocol == "edm" else 1.0 / 255.0

    def apply(p, batch):
        return inception.InceptionV3().apply(
            p, inception.preprocess(batch.astype(jnp.float32) * scale, protocol)
        )

    return extract(apply, params, to_rgb(images_uint8), **kwargs)
