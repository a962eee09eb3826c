"""Memorization scores of generated images against the training images.

* Similarity score (the paper's protocol, Shah et al. 2025): for each generated image the
  maximum cosine similarity of its embedding to any training image's embedding; "S > tau" is
  the percentage of generated images whose score exceeds tau. In pixel space the embedding is
  the image with its mean removed, L2-normalised (cosine of centred pixels = Pearson
  correlation; without centring the shared background makes every pair of digits similar).
* Extraction (Carlini et al. 2023, as in REFERENCE.md s. 3): a generated image is extracted
  when its L2 distance to the nearest training image is below 1/3 of the mean L2 distance to
  its k nearest training images (k = 50, or all but one when there are fewer).

Nearest-neighbour search is blocked over both sets, so no M x N matrix is ever held at once.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np


def pixel_embedding(images):
    """[N, H, W, C] (any range) -> centred, L2-normalised pixel vectors [N, D], float32."""
    x = np.asarray(images, np.float32).reshape(len(images), -1)
    x = x - x.mean(axis=1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@functools.partial(jax.jit, static_argnames=("k", "largest"))
def _block_topk(queries, refs, offset, k, largest):
    """Top-k of one (query block, ref block) pair: scores [q, k] and global ref indices."""
    if largest:
        scores = queries @ refs.T
    else:  # squared L2 distances, negated so that top_k finds the smallest
        scores = -(jnp.sum(queries**2, 1)[:, None] - 2 * queries @ refs.T + jnp.sum(refs**2, 1)[None, :])
    values, index = jax.lax.top_k(scores, k)
    return values, index + offset


def blocked_topk(queries, refs, k=1, metric="cosine", query_block=4096, ref_block=65536):
    """k nearest refs of every query: (scores [M, k], indices [M, k]).

    metric "cosine": inputs are unit vectors, scores are similarities, largest first.
    metric "l2": scores are L2 distances, smallest first.
    """
    queries, refs = np.asarray(queries, np.float32), np.asarray(refs, np.float32)
    k = min(k, len(refs))
    largest = metric == "cosine"
    out_values, out_index = [], []
    for q0 in range(0, len(queries), query_block):
        q = jnp.asarray(queries[q0 : q0 + query_block])
        best_v, best_i = None, None
        for r0 in range(0, len(refs), ref_block):
            r = jnp.asarray(refs[r0 : r0 + ref_block])
            v, i = _block_topk(q, r, r0, min(k, len(r)), largest)
            if best_v is not None:  # merge with the running top-k
                v, i = jnp.concatenate([best_v, v], 1), jnp.concatenate([best_i, i], 1)
                v, pos = jax.lax.top_k(v, k)
                i = jnp.take_along_axis(i, pos, 1)
            best_v, best_i = v, i
        out_values.append(np.asarray(best_v))
        out_index.append(np.asarray(best_i))
    values, index = np.concatenate(out_values), np.concatenate(out_index)
    if not largest:
        values = np.sqrt(np.maximum(-values, 0.0))
    return values, index


def similarity_report(sample_embeddings, train_embeddings, thresholds):
    """Max cosine similarity per sample, its nearest training index, and summary statistics."""
    sims, index = blocked_topk(sample_embeddings, train_embeddings, k=1, metric="cosine")
    sims, index = sims[:, 0], index[:, 0]
    summary = {f"S>{t:g}": float(100 * np.mean(sims > t)) for t in thresholds}
    summary.update(mean=float(sims.mean()), std=float(sims.std()), max=float(sims.max()), median=float(np.median(sims)))
    return sims, index, summary


def extraction_report(samples_flat, train_flat, k=50):
    """Carlini et al. extraction per sample and the nearest-training L2 distance."""
    k = max(1, min(k, len(train_flat) - 1))
    dist, index = blocked_topk(samples_flat, train_flat, k=k, metric="l2")
    extracted = dist[:, 0] < dist.mean(axis=1) / 3.0
    return extracted, dist[:, 0], index[:, 0]
