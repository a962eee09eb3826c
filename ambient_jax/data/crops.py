"""The crops annotation of Ambient Diffusion Omni (Daras et al. 2025): for each out-of-distribution
image, the largest crop size at which its crops still pass as the target's, and from it, through
a crop-size-to-level map, its sigma_max (the top of the levels it may train at).

For each crop size w a small classifier learns to tell w x w crops of the target's clean images
(label 0) from crops of the other images (label 1), on batches with as many of each, crops at
random positions. An image's score at size w is the classifier's mean probability of "other" over
its crops (a fixed grid of positions, stride w / 2). It passes at w when it scores as the target's
own images do: at most the `target_quantile` quantile (0.9) of the clean target images' scores
(a fixed 1/2 does not work: at 4 x 4 the classifier hardly tells the two apart, loss 0.68 of
0.69, yet gives the target's images 0.50 and the others 0.52 in the median, so a bar of 1/2
fails half of either). Its size is the largest w such that it passes at w and at every smaller
size (a crop of the whole image passing: the image passes as the target's).

The map from size to level is measured, not copied (eval/locality.py: the largest level at
which the denoiser's output at a pixel is decided by the w x w window around it); an image that
fails at every size gets the sampler's lowest level (it trains almost never).

Where this follows the group's code (ambient-omni, pixel-diffusion): classifiers on crops of
several sizes, each image annotated with the largest size at which it passes, a table from size
to sigma. Where not: our classifiers are small CNNs sized for a CPU, the crops' grid and the
threshold are ours, and the table is measured on our data (theirs was set for ImageNet).
"""

import dataclasses
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ambient_jax.types import Log, PyTree

LOWEST_LEVEL = 0.002  # EDM's sigma_min: an image that passes at no size trains almost never


@dataclasses.dataclass(frozen=True)
class CropRecipe:
    """How the crops classifiers are trained and asked."""

    sizes: tuple[int, ...] = (4, 6, 8, 12, 16)
    steps: int = 600  # per crop size
    batch_size: int = 256  # half target crops, half other crops
    lr: float = 1e-3
    width: int = 16
    target_quantile: float = 0.9  # passes: scores at most this quantile of the target's scores
    seed: int = 0


class CropClassifier(nn.Module):
    """crop [B, w, w, C] -> the logit of "other": three 3x3 convolutions, the mean over positions
    and a linear read-out (one network per crop size)."""

    width: int = 16

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.relu(nn.Conv(self.width, (3, 3))(x))
        h = nn.relu(nn.Conv(2 * self.width, (3, 3))(h))
        h = nn.relu(nn.Conv(2 * self.width, (3, 3))(h))
        h = nn.relu(nn.Dense(2 * self.width)(jnp.mean(h, axis=(1, 2))))
        return nn.Dense(1)(h)[:, 0]


def crop_at(image: jax.Array, top: jax.Array, left: jax.Array, size: int) -> jax.Array:
    """The size x size crop of image [H, W, C] at (top, left)."""
    return jax.lax.dynamic_slice(image, (top, left, 0), (size, size, image.shape[-1]))


def grid_positions(side: int, size: int) -> np.ndarray:
    """[(top, left)]: the crops an image is asked on, stride size / 2 (at least 1), both ends."""
    stride = max(1, size // 2)
    starts = sorted({*range(0, side - size + 1, stride), side - size})
    return np.array([(t, left) for t in starts for left in starts], np.int32)


def train_size(
    target: np.ndarray | jax.Array,
    others: np.ndarray | jax.Array,
    size: int,
    recipe: CropRecipe,
    log: Log,
) -> tuple[PyTree, float]:
    """The classifier of one crop size, trained on random crops; returns (params, the final
    steps' mean loss)."""
    model = CropClassifier(recipe.width)
    target, others = jnp.asarray(target), jnp.asarray(others)  # indexed by traced draws
    key = jax.random.fold_in(jax.random.key(recipe.seed), size)
    params = model.init(key, jnp.zeros((1, size, size, target.shape[-1])))
    optimizer = optax.adam(recipe.lr)
    half, side = recipe.batch_size // 2, target.shape[1]

    def crops(k, images):
        k_image, k_top, k_left = jax.random.split(k, 3)
        which = jax.random.randint(k_image, (half,), 0, len(images))
        top = jax.random.randint(k_top, (half,), 0, side - size + 1)
        left = jax.random.randint(k_left, (half,), 0, side - size + 1)
        return jax.vmap(lambda i, t, w: crop_at(images[i], t, w, size))(which, top, left)

    @jax.jit
    def step(params, opt_state, k):
        k_target, k_other = jax.random.split(k)
        x = jnp.concatenate([crops(k_target, target), crops(k_other, others)])
        label = jnp.concatenate([jnp.zeros(half), jnp.ones(half)])

        def loss_fn(p):
            return jnp.mean(optax.sigmoid_binary_cross_entropy(model.apply(p, x), label))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state, losses = optimizer.init(params), []
    for i in range(recipe.steps):
        params, opt_state, loss = step(params, opt_state, jax.random.fold_in(key, i + 1))
        losses.append(loss)
    final = float(np.mean(jax.device_get(losses[-50:])))
    log(f"crops classifier {size}x{size}: final loss {final:.4f}")
    return params, final


def other_probability(
    params: PyTree, images: np.ndarray | jax.Array, size: int, recipe: CropRecipe
) -> np.ndarray:
    """[N]: each image's mean probability of "other" over its grid of size x size crops."""
    model = CropClassifier(recipe.width)
    positions = jnp.asarray(grid_positions(images.shape[1], size))

    @jax.jit
    def of_batch(batch):
        def per_image(image):
            found = jax.vmap(lambda p: crop_at(image, p[0], p[1], size))(positions)
            return jnp.mean(jax.nn.sigmoid(model.apply(params, found)))

        return jax.vmap(per_image)(batch)

    images = jnp.asarray(images, jnp.float32)
    return np.concatenate(
        [np.asarray(of_batch(images[i : i + 256])) for i in range(0, len(images), 256)]
    )


def passing_size(
    p_other: np.ndarray, sizes: tuple[int, ...], bars: np.ndarray | float
) -> np.ndarray:
    """[N] the largest size at which each image passes (scores <= that size's bar [len(sizes)])
    at that size and every smaller one, from p_other [N, len(sizes)] (sizes ascending); 0 where
    it fails at the smallest."""
    passes = np.asarray(p_other) <= np.asarray(bars)
    run = np.cumprod(passes, axis=1).astype(bool)  # passes at every size up to this one
    count = run.sum(axis=1)
    return np.where(count > 0, np.asarray(sizes)[np.maximum(count - 1, 0)], 0)


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def annotate(
    target: np.ndarray,
    others: np.ndarray,
    size_levels: dict[int, float],
    recipe: CropRecipe = CropRecipe(),
    log: Log = print,
) -> tuple[np.ndarray, dict, list[PyTree]]:
    """(sigma_max [M] of the other images, a summary, the classifiers' params per size): train a
    classifier per crop size on the target's clean images and the others, find each other
    image's passing size and map it to a level with size_levels (crop size -> sigma_max)."""
    sizes = tuple(sorted(recipe.sizes))
    missing = [w for w in sizes if w not in size_levels]
    if missing:
        raise ValueError(f"the crop-size-to-level map has no level for crop sizes {missing}")
    if max(sizes) > target.shape[1]:
        raise ValueError(f"crop sizes {sizes} exceed the images' side {target.shape[1]}")
    start = time.perf_counter()
    target_j, others_j = jnp.asarray(target), jnp.asarray(others)
    trained = [train_size(target_j, others_j, w, recipe, log) for w in sizes]
    score = lambda images: np.stack(
        [other_probability(p, images, w, recipe) for (p, _), w in zip(trained, sizes)], axis=1
    )
    p_other, p_target = score(others_j), score(target_j)
    bars = np.quantile(p_target, recipe.target_quantile, axis=0)
    size = passing_size(p_other, sizes, bars)
    sigma_max = np.array([size_levels[int(w)] if w else LOWEST_LEVEL for w in size], np.float64)
    log(f"annotated {len(others)} images by their crops in {time.perf_counter() - start:.0f} s")
    summary = {
        "recipe": {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(recipe).items()
        },
        # JSON has no inf: a whole-image crop's level is written null
        "size_levels": {str(w): _finite_or_none(size_levels[w]) for w in sizes},
        "final_losses": {str(w): loss for (_, loss), w in zip(trained, sizes)},
        "mean_p_other": {str(w): float(p_other[:, j].mean()) for j, w in enumerate(sizes)},
        "mean_p_target": {str(w): float(p_target[:, j].mean()) for j, w in enumerate(sizes)},
        "bars": {str(w): float(b) for w, b in zip(sizes, bars)},
        "passing_size_counts": {str(w): int(np.sum(size == w)) for w in (0, *sizes)},
    }
    return sigma_max, summary, [p for p, _ in trained]
