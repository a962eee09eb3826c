"""Classifier annotation of corrupted images (Daras et al. 2025, Ambient Diffusion Omni): for each
corrupted image, the lowest noise level at which it can no longer be told from a clean image.

A noise-conditional classifier c(x + sigma n, sigma) learns to tell noisy clean images (label 0)
from noisy corrupted ones (label 1), on batches with as many of each. Noise destroys information,
so the probability it gives "corrupted" falls towards 1/2 as sigma grows; where it reaches 1/2 the
image's noisy versions look like a clean image's, as far as the classifier can see, and that level
is what sigma_tn means: the ambient loss may use the image above it. For each corrupted image,
p(sigma) is measured on a log-spaced grid of levels (the mean over `trials` noise draws, smoothed
over `window` neighbouring levels) and its sigma_tn is the lowest level from which p stays at or
below 1/2 + epsilon (or the clean images' own mean + epsilon, at levels where a slightly biased
classifier gives clean images more than 1/2).

Where this follows the group's code (ambient-omni, pixel-diffusion/annotate.py and
training/training_loop.py): a classifier trained on the clean and the corrupted images, 4 noise
draws per level, the probabilities smoothed along the levels, epsilon 0.05 around 1/2, the first
level at which the classifier is confused. Where not: their grid is 2,048 sorted draws of EDM's
log-normal with a moving average of 32 and the first level within epsilon; ours is a log-spaced
grid (the classifier also trains on levels drawn log-uniformly over it, so every level asked is a
level it learnt), and we take the lowest level from which p STAYS within epsilon, so one noisy
dip does not annotate an image too low. Their classifier is a DDPM++ encoder; ours a small CNN
sized for a CPU.

For additive noise of std s the annotation is above s (x0 + sqrt(s^2 + sigma^2) n is told from
x0 + sigma n by its variance until sigma is several times s), so on noised images it is the
conservative side of the known value; for a blur it is the only value there is.
"""

import dataclasses
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ambient_jax.types import Log, PyTree

SIGMA_DATA = 0.5


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How the classifier is trained and asked."""

    steps: int = 1500
    batch_size: int = 256  # half clean, half corrupted
    lr: float = 1e-3
    width: int = 16  # the classifier's first convolution's channels
    sigma_min: float = 0.02  # the grid of levels, log-spaced
    sigma_max: float = 20.0
    num_levels: int = 48
    trials: int = 4  # noise draws per image and level
    window: int = 3  # levels in the moving average of p
    epsilon: float = 0.05  # "cannot tell": p <= 1/2 + epsilon
    seed: int = 0


class NoiseClassifier(nn.Module):
    """c(x_sigma, sigma) -> the logit of "corrupted", for noisy images [B, R, R, C] and levels
    [B]. The input is scaled by EDM's c_in = 1 / sqrt(sigma^2 + sigma_data^2) and the level enters
    as a channel and as an embedding, so one network serves every level. Three 3x3 convolutions
    (a 7x7 receptive field), then the mean over positions: the corruptions this annotates (noise,
    blur, compression) are local, and a network that sees whole images would learn which few
    images are the clean ones (it would then call every other image corrupted up to the level
    that hides its identity)."""

    width: int = 16

    @nn.compact
    def __call__(self, x: jax.Array, sigma: jax.Array) -> jax.Array:
        c_in = 1 / jnp.sqrt(sigma**2 + SIGMA_DATA**2)
        c_noise = jnp.log(sigma) / 4
        level = jnp.broadcast_to(c_noise[:, None, None, None], (*x.shape[:3], 1))
        h = jnp.concatenate([x * c_in[:, None, None, None], level], axis=-1)
        h = nn.relu(nn.Conv(self.width, (3, 3))(h))
        h = nn.relu(nn.Conv(2 * self.width, (3, 3))(h))
        h = nn.relu(nn.Conv(2 * self.width, (3, 3))(h))
        # averaged over positions: local statistics (noise, blur), not which image it is
        h = nn.Dense(4 * self.width)(jnp.mean(h, axis=(1, 2)))
        embedding = nn.Dense(4 * self.width)(nn.silu(nn.Dense(self.width)(c_noise[:, None])))
        return nn.Dense(1)(nn.relu(h + embedding))[:, 0]


def levels(recipe: Recipe) -> np.ndarray:
    return np.geomspace(recipe.sigma_min, recipe.sigma_max, recipe.num_levels).astype(np.float32)


def train_classifier(
    clean: np.ndarray | jax.Array,
    corrupted: np.ndarray | jax.Array,
    recipe: Recipe = Recipe(),
    log: Log = print,
) -> tuple[PyTree, float]:
    """Train the classifier on clean [N, R, R, C] and corrupted [M, R, R, C] images; returns
    (params, the final steps' mean loss)."""
    model = NoiseClassifier(recipe.width)
    key = jax.random.key(recipe.seed)
    params = model.init(key, clean[:1], jnp.ones(1))
    optimizer = optax.adam(recipe.lr)
    clean, corrupted = jnp.asarray(clean), jnp.asarray(corrupted)
    half = recipe.batch_size // 2
    log_lo, log_hi = np.log(recipe.sigma_min), np.log(recipe.sigma_max)

    @jax.jit
    def step(params, opt_state, key):
        k_clean, k_bad, k_sigma, k_noise = jax.random.split(key, 4)
        x = jnp.concatenate(
            [
                clean[jax.random.randint(k_clean, (half,), 0, len(clean))],
                corrupted[jax.random.randint(k_bad, (half,), 0, len(corrupted))],
            ]
        )
        label = jnp.concatenate([jnp.zeros(half), jnp.ones(half)])
        sigma = jnp.exp(jax.random.uniform(k_sigma, (2 * half,), minval=log_lo, maxval=log_hi))
        noisy = x + sigma[:, None, None, None] * jax.random.normal(k_noise, x.shape)

        def loss_fn(p):
            logit = model.apply(p, noisy, sigma)
            return jnp.mean(optax.sigmoid_binary_cross_entropy(logit, label))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = optimizer.init(params)
    start, losses = time.perf_counter(), []
    for i in range(recipe.steps):
        params, opt_state, loss = step(params, opt_state, jax.random.fold_in(key, i + 1))
        losses.append(loss)
        if (i + 1) % max(recipe.steps // 5, 1) == 0:
            log(
                f"classifier step {i + 1}/{recipe.steps}: loss "
                f"{float(np.mean(jax.device_get(losses[-50:]))):.4f} "
                f"({time.perf_counter() - start:.0f} s)"
            )
    return params, float(np.mean(jax.device_get(losses[-50:])))


def corrupted_probability(
    params: PyTree, images: np.ndarray, recipe: Recipe = Recipe(), batch_size: int = 64
) -> np.ndarray:
    """p[i, l]: the classifier's mean probability of "corrupted" for image i with noise at level
    l of the grid (over `trials` draws keyed by (recipe.seed, i, l, trial))."""
    model = NoiseClassifier(recipe.width)
    grid = jnp.asarray(levels(recipe))
    key = jax.random.fold_in(jax.random.key(recipe.seed), 0x0A77)

    @jax.jit
    def of_batch(x, index):
        def per_image(x1, i):
            def per_level(sigma, level):
                k = jax.random.fold_in(jax.random.fold_in(key, i), level)
                noise = jax.random.normal(k, (recipe.trials, *x1.shape))
                logit = model.apply(
                    params, x1[None] + sigma * noise, jnp.full(recipe.trials, sigma)
                )
                return jnp.mean(jax.nn.sigmoid(logit))

            return jax.vmap(per_level)(grid, jnp.arange(len(grid)))

        return jax.vmap(per_image)(x, index)

    out = []
    for lo in range(0, len(images), batch_size):
        chunk = np.asarray(images[lo : lo + batch_size])
        pad = batch_size - len(chunk)  # one compiled shape
        padded = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
        p = of_batch(jnp.asarray(padded), jnp.arange(lo, lo + batch_size))
        out.append(np.asarray(p)[: len(chunk)])
    return np.concatenate(out)


def lowest_confused_level(
    p: np.ndarray, grid: np.ndarray, epsilon: float = 0.05, window: int = 3, reference: float = 0.5
) -> np.ndarray:
    """sigma_tn per row of p [M, L] over the levels `grid` [L]: the lowest level from which the
    moving average (over `window` levels, edges shrunk) of p stays <= reference + epsilon; the
    top level when it never does. reference: 1/2, or per level [L] what clean images get there
    (a classifier a little biased at high noise gives clean and corrupted images alike 0.55, which
    is not telling them apart)."""
    p = np.asarray(p, np.float64)
    half = window // 2
    smooth = np.stack(
        [p[:, max(0, j - half) : j + half + 1].mean(axis=1) for j in range(p.shape[1])], axis=1
    )
    confused = smooth <= np.asarray(reference, np.float64) + epsilon
    # the first level l such that every level from l up is confused
    stays = np.flip(np.cumprod(np.flip(confused, axis=1), axis=1), axis=1).astype(bool)
    first = np.where(stays.any(axis=1), np.argmax(stays, axis=1), len(grid) - 1)
    return np.asarray(grid)[first]


def annotate(
    clean: np.ndarray, corrupted: np.ndarray, recipe: Recipe = Recipe(), log: Log = print
) -> tuple[np.ndarray, dict]:
    """(sigma_tn [M] of the corrupted images, a summary dict): train the classifier on the
    clean and corrupted images, then read each corrupted image's level."""
    params, final_loss = train_classifier(clean, corrupted, recipe, log)
    start = time.perf_counter()
    p = corrupted_probability(params, corrupted, recipe)
    p_clean = corrupted_probability(params, clean, recipe).mean(axis=0)
    grid = levels(recipe)
    # "cannot tell": within epsilon of 1/2, or of the clean images' own mean where that is higher
    reference = np.maximum(0.5, p_clean)
    sigma_tn = lowest_confused_level(p, grid, recipe.epsilon, recipe.window, reference)
    log(f"annotated {len(corrupted)} images in {time.perf_counter() - start:.0f} s")
    summary = {
        "recipe": dataclasses.asdict(recipe),
        "final_loss": final_loss,
        "levels": [float(s) for s in grid],
        "mean_p_corrupted": [float(v) for v in p.mean(axis=0)],
        "mean_p_clean": [float(v) for v in p_clean],
        "sigma_tn_quantiles": {
            q: float(np.quantile(sigma_tn, float(q))) for q in ("0.1", "0.5", "0.9")
        },
    }
    return sigma_tn, summary
