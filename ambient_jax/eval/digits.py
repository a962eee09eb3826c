"""A quality measure that knows what a digit is: the Fréchet distance in the feature space of a
small digit classifier, and the share of samples it reads as a digit with confidence.

Inception features of 16x16 digits cannot tell a digit from a scribble (stroke-like samples that
nobody would read as digits score an Inception FID within a few points of real-looking ones).
MNIST work measures quality with a classifier trained on the digits themselves instead. Here:

* the classifier: LeNet-5's shape (LeCun et al. 1998) with ReLU and max pooling, in Flax:
  conv 5x5 (32) -> pool -> conv 5x5 (64) -> pool -> dense 128 (the features) -> dense 10;
* trained once per resolution on a fixed 4,000 of the 5,000 embedded MNIST digits (the split of
  `classifier_split`, seed 0, 400 per class), its accuracy measured on the other 1,000, and cached
  in the user's cache dir with that accuracy;
* `digit_metrics`: FD between the features of the samples and of held-out real digits
  ("FD-digits"), and the share of samples whose most likely class has probability >= 0.9
  ("confident digits %").

Why a classifier trained on the embedded digits does not favour copies of a run's training
images: its split is fixed and unrelated to any run's subset, so a run's training images and its
held-out reference images lie in the classifier's training set in the same proportion (80%). A
copy of a training image is then no more typical, in these features, than a new real digit; what
FD-digits rewards is a sample distribution that matches the held-out digits, and a set of copies of
n images has the narrow covariance that FD penalizes. The evaluation reports both reference rows:
the run's training images against the held-out set, and a disjoint held-out set of the same size.
"""

import os
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from ambient_jax import files
from ambient_jax.data.images import to_unit_range
from ambient_jax.data.sources import load_mnist
from ambient_jax.eval import convert, fid
from ambient_jax.types import PyTree

CONFIDENCE = 0.9  # a sample "reads as a digit" when its most likely class has this probability
TRAIN_PER_CLASS = 400  # of the 500 embedded digits of each class; the other 100 test the network
# The training recipe; part of the cache file's name, so a change retrains instead of reusing.
RECIPE: dict[str, Any] = dict(steps=800, batch_size=128, lr=1e-3, shift=1, seed=0)
VERSION = 1


class DigitClassifier(nn.Module):
    """LeNet-style classifier of grey digits [B, R, R, 1] in [-1, 1]; returns (features [B, 128],
    logits [B, 10])."""

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        for channels in (32, 64):
            x = nn.relu(nn.Conv(channels, (5, 5))(x))
            x = nn.max_pool(x, (2, 2), (2, 2))
        features = nn.relu(nn.Dense(128)(x.reshape(x.shape[0], -1)))
        return features, nn.Dense(10)(features)


def classifier_split(labels: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices) of the embedded digits: TRAIN_PER_CLASS of each class by
    `seed` for training, the rest for testing; sorted."""
    rng = np.random.RandomState(seed)
    per_class = [
        rng.permutation(np.flatnonzero(labels == digit))[:TRAIN_PER_CLASS] for digit in range(10)
    ]
    train = np.sort(np.concatenate(per_class))
    return train, np.setdiff1d(np.arange(len(labels)), train)


def _shift(images, key, pixels):
    """Each image translated by a random whole-pixel offset in [-pixels, pixels]^2, background
    filled in, so the classifier does not hinge on the digits' exact centring."""
    size = images.shape[1]
    padded = jnp.pad(
        images, ((0, 0), (pixels, pixels), (pixels, pixels), (0, 0)), constant_values=-1
    )
    offsets = jax.random.randint(key, (len(images), 2), 0, 2 * pixels + 1)
    crop = lambda image, o: jax.lax.dynamic_slice(image, (o[0], o[1], 0), (size, size, 1))
    return jax.vmap(crop)(padded, offsets)


def train_classifier(
    images: np.ndarray | jax.Array,
    labels: np.ndarray | jax.Array,
    steps: int,
    batch_size: int,
    lr: float,
    shift: int,
    seed: int,
) -> PyTree:
    """Parameters of a DigitClassifier trained with Adam on float images [N, R, R, 1] in [-1, 1]
    (cross-entropy, batches drawn with replacement, random shifts of up to `shift` pixels)."""
    model = DigitClassifier()
    key = jax.random.key(seed)
    params = model.init(key, jnp.zeros((1, *images.shape[1:])))
    optimizer = optax.adam(lr)
    images, labels = jnp.asarray(images), jnp.asarray(labels)

    @jax.jit
    def step(params, opt_state, key):
        pick, move = jax.random.split(key)
        rows = jax.random.randint(pick, (batch_size,), 0, len(images))
        batch = _shift(images[rows], move, shift) if shift else images[rows]

        def loss(p):
            logits = model.apply(p, batch)[1]
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels[rows]).mean()

        grads = jax.grad(loss)(params)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state

    opt_state = optimizer.init(params)
    for i in range(steps):
        params, opt_state = step(params, opt_state, jax.random.fold_in(key, i))
    return params


_classify = jax.jit(lambda params, x: DigitClassifier().apply(params, x))


def _apply(params, images_u8, batch_size=500):
    """(features, class probabilities) of uint8 images [N, R, R, 1], in batches."""
    feats, probs = [], []
    for start in range(0, len(images_u8), batch_size):
        f, logits = _classify(params, to_unit_range(images_u8[start : start + batch_size]))
        feats.append(np.asarray(f, np.float64))
        probs.append(np.asarray(jax.nn.softmax(logits), np.float64))
    return np.concatenate(feats), np.concatenate(probs)


# Fixed at import, so that tests which point the Inception cache elsewhere share one classifier.
CACHE_DIR = os.path.join(convert.CACHE_DIR, "digits")


def cache_path(resolution: int) -> str:
    recipe = "_".join(f"{k}{v}" for k, v in RECIPE.items())
    return os.path.join(CACHE_DIR, f"lenet_v{VERSION}_r{resolution}_{recipe}.msgpack")


def load_classifier(resolution: int, log: Callable[[str], None] = print) -> tuple[dict, float]:
    """(parameters, test accuracy) of the digit classifier at `resolution` (16, 28 or 32): read
    from the cache, else trained on the embedded digits (tens of seconds on a CPU) and cached."""
    path = cache_path(resolution)
    if files.exists(path):
        template = jax.eval_shape(
            DigitClassifier().init, jax.random.key(0), jnp.zeros((1, resolution, resolution, 1))
        )
        stored = serialization.msgpack_restore(files.read_bytes(path))
        params = serialization.from_state_dict(template, stored["params"])
        return params, float(stored["test_accuracy"])
    images_u8, labels = load_mnist(resolution)
    train, test = classifier_split(labels)
    log(
        f"training the digit classifier at {resolution}x{resolution} on {len(train)} embedded "
        f"digits (once; cached in {path}) ..."
    )
    start = time.perf_counter()
    params = train_classifier(to_unit_range(images_u8[train]), labels[train], **RECIPE)
    accuracy = float((_apply(params, images_u8[test])[1].argmax(axis=1) == labels[test]).mean())
    seconds = time.perf_counter() - start
    log(f"  test accuracy {100 * accuracy:.2f}% on {len(test)} held-out digits ({seconds:.0f} s)")
    state = {"params": serialization.to_state_dict(params), "test_accuracy": accuracy}
    files.makedirs(os.path.dirname(path))
    files.write_bytes_atomic(path, serialization.msgpack_serialize(state))
    return params, accuracy


def confident_share(probs: np.ndarray) -> float:
    """% of rows whose most likely class has probability >= CONFIDENCE."""
    return float(100 * (probs.max(axis=1) >= CONFIDENCE).mean())


def confident_by_class(probs: np.ndarray) -> list[float]:
    """For each class c, % of rows read as c with confidence: most likely class c, probability
    >= CONFIDENCE (a model fine-tuned on one class: how many of its samples are that digit)."""
    confident = probs.max(axis=1) >= CONFIDENCE
    label = probs.argmax(axis=1)
    return [float(100 * np.mean(confident & (label == c))) for c in range(probs.shape[1])]


def target_shares(probs: np.ndarray, target_classes: tuple[int, ...]) -> dict[str, float]:
    """For a run whose target is some classes (data.classes): "leakage", the % of rows whose most
    likely class is another one, and "confident_target_digits", the % read with confidence as
    one of the target's classes."""
    label, confident = probs.argmax(axis=1), probs.max(axis=1) >= CONFIDENCE
    inside = np.isin(label, target_classes)
    return {
        "leakage": float(100 * np.mean(~inside)),
        "confident_target_digits": float(100 * np.mean(inside & confident)),
    }


def digit_metrics(
    samples_u8: np.ndarray,
    heldout_u8: np.ndarray,
    train_u8: np.ndarray,
    other_heldout_u8: np.ndarray | None,
    log: Callable[[str], None] = print,
    target_classes: tuple[int, ...] = (),
) -> dict:
    """FD-digits of the samples against `heldout_u8` and their confident-digit share, with the
    reference rows: the training images against the same held-out set, `other_heldout_u8` (real
    digits disjoint from `heldout_u8`, or None) against it, and the held-out set's own share.
    With target_classes (a run on some classes only): the samples' and the held-out digits'
    leakage and confident share of the target's classes (target_shares)."""
    params, accuracy = load_classifier(samples_u8.shape[1], log)
    f_samples, p_samples = _apply(params, samples_u8)
    f_heldout, p_heldout = _apply(params, heldout_u8)
    f_train = _apply(params, train_u8)[0]
    out = {
        "digit_classifier_test_accuracy": accuracy,
        "fd_digits": fid.frechet_distance_of(f_samples, f_heldout),
        "confident_digits": confident_share(p_samples),
        "heldout_confident_digits": confident_share(p_heldout),
        "fd_digits_train_vs_heldout": fid.frechet_distance_of(f_train, f_heldout),
        "class_histogram": np.bincount(p_samples.argmax(axis=1), minlength=10).tolist(),
        "confident_by_class": confident_by_class(p_samples),
        "heldout_confident_by_class": confident_by_class(p_heldout),
    }
    if target_classes:
        out.update(target_shares(p_samples, target_classes))
        out.update({f"heldout_{k}": v for k, v in target_shares(p_heldout, target_classes).items()})
    if other_heldout_u8 is not None:
        out["fd_digits_heldout_vs_heldout"] = fid.frechet_distance_of(
            _apply(params, other_heldout_u8)[0], f_heldout
        )
        out["num_other_heldout"] = int(len(other_heldout_u8))
    return out
