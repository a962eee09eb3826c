"""Memorization scores of generated images against the training images.

* Similarity score (the paper's protocol, Shah et al. 2025): for each generated image the
  maximum cosine similarity of its embedding to any training image's embedding; "S > tau" is
  the percentage of generated images whose score exceeds tau. In pixel space the embedding is
  the image with its mean removed, L2-normalised (cosine of centred pixels = Pearson
  correlation; without centring the shared background makes every pair of digits similar).
* Extraction (Carlini et al. 2023, "Extracting training data from diffusion models"): a generated
  image is extracted
  when its L2 distance to the nearest training image is below 1/3 of the mean L2 distance to
  its k nearest training images (k = 50, or all but one when there are fewer).

* Noise-robust view: both criteria on robust_view(x) = tanh(3 blur(x)), a Gaussian blur of
  0.5 pixel per 16 pixels of image size followed by a soft threshold at mid-grey. A noisy copy
  of a training image is still a copy, but per-pixel noise raises every L2 distance and lowers
  every cosine, so the raw criteria call it new (training digits plus N(0, 0.3^2) noise, clipped
  to [-1, 1] as samples are: 0% extracted in pixels, 95% in this view). The blur averages the
  speckle down, the threshold restores the nearly binary strokes and flattens what is left of it
  on the background. Held-out real digits keep their raw reference level in this view (1.5%
  extracted, S > 0.95 1.1% against 2.5% and 1.5% in pixels, 100 training digits), so the
  view does not make distinct digits look alike. It is meant for digit-like images; for
  natural images use the DINOv2 embedding.

Nearest-neighbour search is blocked over both sets, so no M x N matrix is ever held at once.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

ROBUST_GAIN = 3.0


def robust_sigma(resolution: int) -> float:
    """The robust view's blur in pixels: 0.5 pixel per 16 pixels of image size."""
    return 0.5 * resolution / 16.0


def robust_view(images: np.ndarray, blur_px: float) -> np.ndarray:
    """[N, H, W, C] in [-1, 1] -> tanh(ROBUST_GAIN * Gaussian blur of blur_px pixels over H and W)
    (borders: nearest pixel), float32."""
    blurred = ndimage.gaussian_filter(
        np.asarray(images, np.float32), sigma=(0, blur_px, blur_px, 0), mode="nearest"
    )
    return np.tanh(ROBUST_GAIN * blurred)


def pixel_embedding(images: np.ndarray) -> np.ndarray:
    """[N, H, W, C] (any range) -> centred, L2-normalised pixel vectors [N, D], float32."""
    x = np.asarray(images, np.float32).reshape(len(images), -1)
    x = x - x.mean(axis=1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _scores(queries, refs, largest):
    if largest:
        return queries @ refs.T
    # squared L2 distances, negated so that the largest score is the nearest
    return -(jnp.sum(queries**2, 1)[:, None] - 2 * queries @ refs.T + jnp.sum(refs**2, 1)[None, :])


def _best_k(scores, k):
    if k == 1:  # a max/argmax reduction instead of a sort
        index = jnp.argmax(scores, axis=1)[:, None]
        return jnp.take_along_axis(scores, index, 1), index
    return jax.lax.top_k(scores, k)


@functools.partial(jax.jit, static_argnames=("k", "largest"))
def _query_block_topk(queries, ref_blocks, num_refs, k, largest):
    """Top-k of one query block over all ref blocks [nb, rb, D] in one call: a scan over the
    blocks keeps a running top-k, so the refs move to the device once and no [q, N] matrix
    exists."""
    block = ref_blocks.shape[1]

    def step(best, xs):
        refs, offset = xs
        scores = _scores(queries, refs, largest)
        valid = offset + jnp.arange(block) < num_refs  # the last block is padded
        values, index = _best_k(jnp.where(valid[None, :], scores, -jnp.inf), k)
        values, index = (
            jnp.concatenate([best[0], values], 1),
            jnp.concatenate([best[1], index + offset], 1),
        )
        merged, pos = _best_k(values, k)
        return (merged, jnp.take_along_axis(index, pos, 1)), None

    start = (
        jnp.full((queries.shape[0], k), -jnp.inf, queries.dtype),
        jnp.zeros((queries.shape[0], k), jnp.int32),
    )
    offsets = jnp.arange(ref_blocks.shape[0], dtype=jnp.int32) * block
    (values, index), _ = jax.lax.scan(step, start, (ref_blocks, offsets))
    return values, index


def blocked_topk(
    queries: np.ndarray,
    refs: np.ndarray,
    k: int = 1,
    metric: str = "cosine",
    query_block: int = 4096,
    ref_block: int = 65536,
) -> tuple[np.ndarray, np.ndarray]:
    """k nearest refs of every query: (scores [M, k], indices [M, k]).

    metric "cosine": inputs are unit vectors, scores are similarities, largest first.
    metric "l2": scores are L2 distances, smallest first.
    """
    queries, refs = np.asarray(queries, np.float32), np.asarray(refs, np.float32)
    k = min(k, len(refs))
    largest = metric == "cosine"
    ref_block = min(ref_block, len(refs))
    blocks = -(-len(refs) // ref_block)
    padded = np.zeros((blocks * ref_block, refs.shape[1]), np.float32)
    padded[: len(refs)] = refs
    ref_blocks = jnp.asarray(padded.reshape(blocks, ref_block, refs.shape[1]))
    out_values, out_index = [], []
    for q0 in range(0, len(queries), query_block):
        v, i = _query_block_topk(
            jnp.asarray(queries[q0 : q0 + query_block]), ref_blocks, len(refs), k, largest
        )
        out_values.append(np.asarray(v))
        out_index.append(np.asarray(i))
    values, index = np.concatenate(out_values), np.concatenate(out_index)
    if not largest:
        values = np.sqrt(np.maximum(-values, 0.0))
    return values, index


def similarity_report(
    sample_embeddings: np.ndarray, train_embeddings: np.ndarray, thresholds: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Max cosine similarity per sample, its nearest training index, and summary statistics."""
    sims, index = blocked_topk(sample_embeddings, train_embeddings, k=1, metric="cosine")
    sims, index = sims[:, 0], index[:, 0]
    summary = {f"S>{t:g}": float(100 * np.mean(sims > t)) for t in thresholds}
    summary.update(
        mean=float(sims.mean()),
        std=float(sims.std()),
        max=float(sims.max()),
        median=float(np.median(sims)),
    )
    return sims, index, summary


def extraction_report(
    samples_flat: np.ndarray, train_flat: np.ndarray, k: int = 50
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Carlini et al. extraction per sample, the nearest-training L2 distance and that image's
    index."""
    k = max(1, min(k, len(train_flat) - 1))
    dist, index = blocked_topk(samples_flat, train_flat, k=k, metric="l2")
    extracted = dist[:, 0] < dist.mean(axis=1) / 3.0
    return extracted, dist[:, 0], index[:, 0]


def extraction_rate(samples_flat: np.ndarray, train_flat: np.ndarray, k: int = 50) -> float:
    """The share of samples (%) that the Carlini et al. criterion calls extracted: the one figure
    the evaluation and the tracking during training both report, in either view."""
    return float(100 * extraction_report(samples_flat, train_flat, k)[0].mean())
