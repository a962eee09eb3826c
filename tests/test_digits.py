"""The digit classifier behind FD-digits and the confident-digit share (ambient_jax.eval.digits)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ambient_jax.data.sources import load_mnist
from ambient_jax.eval import digits, fid


def test_classifier_split_is_fixed_balanced_and_disjoint():
    _, labels = load_mnist(16)
    train, test = digits.classifier_split(labels)
    assert len(train) == 4000 and len(test) == 1000
    assert np.bincount(labels[train], minlength=10).tolist() == [400] * 10
    assert np.intersect1d(train, test).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(5000))
    np.testing.assert_array_equal(digits.classifier_split(labels)[0], train)  # fixed by its seed


def test_shift_translates_each_image_by_at_most_the_given_pixels_with_background_fill():
    images = jnp.asarray(np.random.RandomState(0).uniform(-1, 1, (64, 6, 6, 1)), jnp.float32)
    moved = np.asarray(digits._shift(images, jax.random.key(0), 1))
    padded = np.pad(np.asarray(images), ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-1)
    seen = set()
    for image, out in zip(padded, moved):
        matches = [
            (dy, dx)
            for dy in range(3)
            for dx in range(3)
            if np.array_equal(image[dy : dy + 6, dx : dx + 6], out)
        ]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) == 9  # every offset in [-1, 1]^2 is drawn


def test_confident_share_counts_rows_at_or_above_the_threshold():
    probs = np.array([[0.9, 0.1], [0.89, 0.11], [0.05, 0.95], [0.5, 0.5]])
    assert digits.confident_share(probs) == 50.0


@pytest.fixture(scope="module")
def heldout_digits():
    images, labels = load_mnist(16)
    test = digits.classifier_split(labels)[1]
    test = test[np.random.RandomState(0).permutation(len(test))]  # the source is sorted by class
    return images[test], labels[test]


def test_the_classifier_reads_digits_and_fd_digits_tells_digits_from_scribbles(heldout_digits):
    """The cached classifier (trained here once if missing): >= 95% on the 1,000 digits it never
    saw; on real digits FD-digits is near its floor and most are read with confidence; digits cut
    into 4x4 blocks and shuffled (stroke fragments, no digit) are far away and rarely confident."""
    params, accuracy = digits.load_classifier(16)
    assert accuracy >= 0.95
    images, labels = heldout_digits
    feats, probs = digits._apply(params, images)
    assert feats.shape == (1000, 128)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    assert (probs.argmax(axis=1) == labels).mean() == pytest.approx(accuracy)

    a, b = images[:500], images[500:]
    rng = np.random.RandomState(0)
    blocks = a.reshape(500, 4, 4, 4, 4, 1).transpose(0, 1, 3, 2, 4, 5).reshape(500, 16, 4, 4, 1)
    shuffled = np.stack([x[rng.permutation(16)] for x in blocks])
    scribbles = shuffled.reshape(500, 4, 4, 4, 4, 1).transpose(0, 1, 3, 2, 4, 5)
    scribbles = scribbles.reshape(500, 16, 16, 1)
    copies = np.repeat(a[:25], 20, axis=0)  # 500 samples that copy 25 digits

    reals = digits.digit_metrics(b, a, a[:100], None, log=lambda _: None)
    fake = digits.digit_metrics(scribbles, a, a[:100], b, log=lambda _: None)
    copied = digits.digit_metrics(copies, a, a[:100], b, log=lambda _: None)
    assert reals["confident_digits"] >= 85 and fake["confident_digits"] <= 50
    assert fake["fd_digits"] > 5 * reals["fd_digits"]
    assert copied["fd_digits"] > 2 * reals["fd_digits"]  # 25 images lack the digits' diversity
    # The reference rows: b against a, and a's first 100 against a, computed as defined.
    assert fake["fd_digits_heldout_vs_heldout"] == pytest.approx(reals["fd_digits"])
    assert reals["fd_digits_train_vs_heldout"] == pytest.approx(
        fid.frechet_distance_of(feats[:100], feats[:500]), rel=1e-6
    )
    assert reals["heldout_confident_digits"] == digits.confident_share(probs[:500])
    assert sum(fake["class_histogram"]) == 500
    # a target of classes 0-4: real digits of 5-9 are leakage, real ones of 0-4 the target's
    low, high = images[labels < 5][:200], images[labels >= 5][:200]
    on_low = digits.digit_metrics(
        low, a, a[:100], None, lambda _: None, target_classes=(0, 1, 2, 3, 4)
    )
    on_high = digits.digit_metrics(
        high, a, a[:100], None, lambda _: None, target_classes=(0, 1, 2, 3, 4)
    )
    assert on_low["leakage"] < 5 and on_high["leakage"] > 90
    assert on_low["confident_target_digits"] > 85 > 5 > on_high["confident_target_digits"]
    shares = digits.target_shares(probs[:500], (0, 1, 2, 3, 4))  # by its definition
    label = probs[:500].argmax(axis=1)
    assert shares["leakage"] == pytest.approx(100 * np.mean(label >= 5))
    sure = probs[:500].max(axis=1) >= digits.CONFIDENCE
    assert shares["confident_target_digits"] == pytest.approx(100 * np.mean(sure & (label < 5)))
    assert "leakage" not in reals  # only for a run on some classes
