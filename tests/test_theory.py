"""Feldman's long-tail theory (tau_l, Theorem 1) and the label-memorization estimator."""

import os

import numpy as np
import pytest

from ambient_jax.theory import label_memorization as lm
from ambient_jax.theory import longtail as lt


@pytest.mark.parametrize(
    "prior", [[0.1, 0.3, 0.6, 0.6], [1.0, 2.0, 5.0], [0.2, 0.2, 0.5, 0.9, 1.3]]
)
def test_tau_matches_brute_force_enumeration(prior):
    marginal = lt.marginal_exact(prior)
    np.testing.assert_allclose(marginal.weights.sum(), 1.0, rtol=1e-12)
    for n in (1, 3, 6):
        for ell in range(1, min(n, 3) + 1):
            np.testing.assert_allclose(
                lt.tau(marginal, n, [ell])[0], lt.tau_brute_force(prior, n, ell), rtol=1e-10
            )


def test_tau_1_is_order_1_over_n_for_zipf_and_vanishes_for_light_tails():
    ns = [1000, 10000, 100000]
    zipf = [n * lt.tau(lt.marginal_mean_field(lt.zipf_prior(10 * n)), n, [1])[0] for n in ns]
    assert min(zipf) > 0.1 and max(zipf) / min(zipf) < 1.5, zipf  # n tau_1 stays of order one
    # Light tail: N = n^2 equally rare elements (frequency 1/n^2, far below 1/n).
    light = [
        n * lt.tau(lt.marginal_mean_field(np.ones(n * n)), n, [1])[0] for n in (100, 1000, 3000)
    ]
    np.testing.assert_allclose(
        light, [1 / 100, 1 / 1000, 1 / 3000], rtol=1e-6
    )  # n tau_1 = 1/n -> 0
    weights = [lt.heavy_tail_weight(lt.marginal_mean_field(lt.zipf_prior(10 * n)), n) for n in ns]
    assert min(weights) > 0.04  # a constant share of the mass sits on ~1/n elements
    assert lt.heavy_tail_weight(lt.marginal_mean_field(np.ones(1000 * 1000)), 1000) == 0.0


def test_tau_is_stable_for_large_n_and_compression_keeps_it():
    marginal = lt.marginal_mean_field(lt.zipf_prior(10**6))
    exact = lt.tau(marginal, 10**6, [1, 10, 1000, 10**6])
    compressed = lt.tau(marginal, 10**6, [1, 10, 1000, 10**6], max_atoms=4096)
    assert np.all(np.isfinite(exact)) and np.all(np.diff(exact) > 0)
    np.testing.assert_allclose(compressed, exact, rtol=1e-3)


def test_theorem1_gap_matches_tau_1_times_singleton_errors():
    heavy = lt.simulate_theorem1(lt.zipf_prior(400), n=200, trials=2000, seed=0)
    assert abs(heavy["gap"] - heavy["predicted_gap"]) < 3 * heavy["gap_stderr"], heavy
    assert heavy["gap"] > 0.05  # refusing to fit singletons costs ~7% accuracy here
    assert lt.theorem1_lower_bound(
        [heavy["tau_1"]], [heavy["mean_singleton_errors"]]
    ) == pytest.approx(heavy["predicted_gap"])
    frequent = lt.simulate_theorem1(
        np.ones(20), n=200, trials=500, seed=1
    )  # every element seen many times
    assert frequent["gap"] < 1e-3 and frequent["predicted_gap"] < 1e-3
    rare = lt.simulate_theorem1(
        np.ones(40000), n=200, trials=500, seed=2
    )  # singletons of frequency 1/N << 1/n
    assert rare["gap"] < heavy["gap"] / 20


def planted_data(seed=0, d=20, classes=4, per_class=60, singles=12, flips=12):
    """Gaussian clusters (typical), isolated points with their own label (atypical singletons)
    and cluster points with a wrong label (flips). kind: 0 typical, 1 singleton, 2 flipped."""
    rng = np.random.RandomState(seed)
    means = rng.randn(classes, d) * 4
    x = np.concatenate([means[c] + rng.randn(per_class, d) for c in range(classes)])
    y = np.repeat(np.arange(classes), per_class)
    kind = np.zeros(len(x), int)
    flipped = rng.choice(len(x), flips, replace=False)
    y[flipped] = (y[flipped] + 1 + rng.randint(0, classes - 1, flips)) % classes
    kind[flipped] = 2
    lone = rng.randn(singles, d)
    lone = lone / np.linalg.norm(lone, axis=1, keepdims=True) * 12
    x = np.concatenate([x, lone]).astype(np.float32)
    y = np.concatenate([y, rng.randint(0, classes, singles)])
    return x, y, np.concatenate([kind, np.ones(singles, int)])


@pytest.mark.optimized  # 160 networks trained 300 steps each
def test_estimator_finds_planted_memorization_and_its_error_shrinks_like_1_over_sqrt_k():
    x, y, kind = planted_data()
    small = lm.estimate(x, y, 4, num_models=32, fraction=0.7, steps=300, hidden=(128,), lr=3e-3)
    large = lm.estimate(
        x,
        y,
        4,
        num_models=128,
        fraction=0.7,
        steps=300,
        hidden=(128,),
        lr=3e-3,
        test_x=x[:5],
        test_y=y[:5],
    )
    for r in (small, large):
        assert abs(r["mem"][kind == 0].mean()) < 0.06
        assert r["mem"][kind == 2].mean() > 0.8
        assert r["mem"][kind == 1].mean() > 0.5
    hard = kind > 0
    ratio = small["mem_stderr"][hard].mean() / large["mem_stderr"][hard].mean()
    assert 1.6 < ratio < 2.5, ratio  # sqrt(128 / 32) = 2
    # Influence of an example on itself (as a test point) is its memorization.
    np.testing.assert_allclose(np.diag(large["infl"][:5]), large["mem"][:5])
    assert large["models_per_second"] > 0


def test_estimator_needs_examples_both_in_and_out():
    masks = np.ones((4, 3))
    with pytest.raises(ValueError, match="fraction"):
        lm.in_out_difference(np.ones((4, 3)), masks)


def test_mnist_study_writes_its_scores_summary_and_figures(tmp_path):
    """ambient-labelmem's study on 100 digits: scores for every training digit, a summary that
    agrees with them."""
    from ambient_jax import files

    summary = lm.mnist_study(
        str(tmp_path), n_train=100, num_models=24, fraction=0.7, steps=20, seed=0
    )
    scores = files.load_npz(str(tmp_path / "scores.npz"))
    assert scores["mem"].shape == (100,) and len(scores["test_indices"]) == 4900
    assert not set(scores["train_indices"]) & set(scores["test_indices"])
    assert np.all(np.abs(scores["mem"]) <= 1) and np.all(scores["mem_stderr"] >= 0)
    np.testing.assert_allclose(summary["mean_mem"], scores["mem"].mean(), rtol=1e-6)
    assert summary["most_memorized"][0]["mem"] == pytest.approx(scores["mem"].max())
    for name in ("summary.json", "most_least_memorized.png", "memorization_histogram.png"):
        assert os.path.getsize(tmp_path / name) > 0
