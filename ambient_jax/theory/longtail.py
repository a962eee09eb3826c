"""Feldman (2020), "Does learning require memorization? A short tale about a long tail" (the
lecture's section 3): the weight tau_l of examples seen l times, the heavy-tail condition and
the lower bound of Theorem 1, computed exactly.

Setup (lecture 3.3): a population X = [N]; each x gets p_x drawn independently from the prior
pi (a list of N frequencies, drawn uniformly), and D(x) = p_x / sum_y p_y. pi_bar is the
resulting marginal distribution of one element's frequency D(x). For a data set of n draws,

    tau_l = E_{a ~ pi_bar}[a^(l+1) (1-a)^(n-l)] / E_{a ~ pi_bar}[a^l (1-a)^(n-l)]

is the expected frequency of an element seen exactly l times, and Theorem 1 says that any
learner A pays, on top of the optimum, at least sum_l tau_l * errn_Z(A, l), where errn_Z(A, l)
is the (expected) number of elements seen l times in Z that A mislabels.

Heavy tail (lecture eq. (1)): weight(pi_bar, [1/(2n), 1/n]) = N E_{a~pi_bar}[a 1(a in range)],
the expected total probability of elements whose frequency is about 1/n, is Omega(1).

All sums over pi_bar's atoms are done in log space (logsumexp), so n up to 10^6 and frequencies
down to 1e-300 are fine.
"""

import dataclasses
import itertools
from math import comb
from typing import Sequence

import numpy as np
from scipy.special import gammaln, logsumexp


@dataclasses.dataclass(frozen=True)
class Marginal:
    """pi_bar as a discrete distribution: frequencies `atoms` with probabilities `weights`."""

    atoms: np.ndarray
    weights: np.ndarray
    population: int  # N, the number of elements (for the weight of a frequency range)


def zipf_prior(num_elements: int, exponent: float = 1.0) -> np.ndarray:
    """The Zipf / power-law list of frequencies pi_i proportional to i^(-exponent), i = 1..N."""
    ranks = np.arange(1, num_elements + 1, dtype=np.float64)
    values = ranks**-exponent
    return values / values.sum()


def marginal_mean_field(prior: np.ndarray) -> Marginal:
    """pi_bar for large N: D(x) = p_x / sum_y p_y with the sum replaced by its mean, p_x + (N-1)
    E[p].

    The relative error of the sum is O(1/sqrt(N)) for a prior of bounded spread; use
    `marginal_exact` for small N.
    """
    prior = np.asarray(prior, np.float64)
    values, counts = np.unique(prior, return_counts=True)
    n_elements = len(prior)
    atoms = values / (values + (n_elements - 1) * prior.mean())
    return Marginal(atoms, counts / n_elements, n_elements)


def marginal_exact(prior: np.ndarray) -> Marginal:
    """pi_bar exactly, for small N: the law of p_x / (p_x + S) with S the sum of N-1 independent
    draws from the prior, S enumerated as multisets (multinomial weights)."""
    prior = np.asarray(prior, np.float64)
    n_elements = len(prior)
    values, counts = np.unique(prior, return_counts=True)
    probs = counts / n_elements
    atom_parts, weight_parts = [], []
    for combo in itertools.combinations_with_replacement(range(len(values)), n_elements - 1):
        k = np.bincount(np.asarray(combo, int), minlength=len(values))
        log_multinomial = gammaln(n_elements) - np.sum(gammaln(k + 1)) + np.sum(k * np.log(probs))
        rest = float(np.dot(k, values))
        atom_parts.append(values / (values + rest))
        weight_parts.append(probs * np.exp(log_multinomial))
    atoms, weights = np.concatenate(atom_parts), np.concatenate(weight_parts)
    unique, inverse = np.unique(np.round(atoms, 15), return_inverse=True)
    return Marginal(unique, np.bincount(inverse, weights), n_elements)


def marginal_from_samples(frequencies: np.ndarray, population: int | None = None) -> Marginal:
    """pi_bar as the empirical distribution of observed element frequencies."""
    frequencies = np.asarray(frequencies, np.float64)
    values, counts = np.unique(frequencies, return_counts=True)
    return Marginal(values, counts / len(frequencies), population or len(frequencies))


def compress(marginal: Marginal, max_atoms: int = 4096) -> Marginal:
    """pi_bar with at most max_atoms atoms: atoms binned on a log grid, each bin's atom the
    weighted mean frequency (so E[a] is kept exactly). A no-op for small marginals."""
    if len(marginal.atoms) <= max_atoms:
        return marginal
    log_a = np.log(marginal.atoms)
    edges = np.linspace(log_a.min(), log_a.max() + 1e-12, max_atoms + 1)
    bins = np.clip(np.searchsorted(edges, log_a, side="right") - 1, 0, max_atoms - 1)
    weights = np.bincount(bins, marginal.weights, max_atoms)
    mass = np.bincount(bins, marginal.weights * marginal.atoms, max_atoms)
    used = weights > 0
    return Marginal(mass[used] / weights[used], weights[used], marginal.population)


def tau(
    marginal: Marginal,
    n: int,
    multiplicities: Sequence[int] | None = None,
    max_atoms: int | None = None,
) -> np.ndarray:
    """tau_l for l in `multiplicities` (default 1..n), computed in log space. Shape [len(l)].

    max_atoms: compress pi_bar first (see `compress`) when it has more atoms, e.g. 4096 for
    l = 1..10^6 over a Zipf prior of 10^6 distinct frequencies (seconds instead of hours).
    """
    ls = np.arange(1, n + 1) if multiplicities is None else np.asarray(multiplicities)
    if np.any(ls < 1) or np.any(ls > n):
        raise ValueError(f"multiplicities must lie in 1..n={n}")
    if max_atoms:
        marginal = compress(marginal, max_atoms)
    keep = (marginal.weights > 0) & (marginal.atoms > 0)
    log_w = np.log(marginal.weights[keep])
    log_a = np.log(marginal.atoms[keep])
    log_1ma = np.log1p(-np.minimum(marginal.atoms[keep], 1.0))
    out = np.empty(len(ls))
    chunk = max(1, 2**22 // max(1, int(keep.sum())))
    for start in range(0, len(ls), chunk):  # [ell, atoms] blocks: never an n x atoms matrix at once
        ell = ls[start : start + chunk, None].astype(np.float64)
        base = log_w[None, :] + ell * log_a[None, :] + (n - ell) * log_1ma[None, :]
        out[start : start + chunk] = np.exp(
            logsumexp(base + log_a[None, :], axis=1) - logsumexp(base, axis=1)
        )
    return out


def heavy_tail_weight(marginal: Marginal, n: int) -> float:
    """weight(pi_bar, [1/(2n), 1/n]) = N E[a 1(1/(2n) <= a <= 1/n)]: the expected mass of ~1/n
    elements."""
    inside = (marginal.atoms >= 1 / (2 * n)) & (marginal.atoms <= 1 / n)
    return float(marginal.population * np.sum(marginal.weights * marginal.atoms * inside))


def theorem1_lower_bound(
    taus: Sequence[float] | np.ndarray,
    errors_by_multiplicity: Sequence[float] | np.ndarray,
    opt: float = 0.0,
) -> float:
    """opt + sum_l tau_l errn_Z(A, l): Theorem 1's bound on the expected error of a learner whose
    expected number of mislabelled elements among those seen l times is
    errors_by_multiplicity[l-1]."""
    errors = np.asarray(errors_by_multiplicity, np.float64)
    return float(opt + np.dot(np.asarray(taus)[: len(errors)], errors))


def tau_brute_force(prior: np.ndarray, n: int, ell: int = 1) -> float:
    """tau_l from the definition, for tiny N: enumerate every assignment (p_1..p_N) of the prior,
    and average D(x_1) over instances weighted by P(x_1 is seen exactly ell times in n draws)."""
    prior = np.asarray(prior, np.float64)
    n_elements = len(prior)

    num = den = 0.0
    for assignment in itertools.product(prior, repeat=n_elements):
        d = np.asarray(assignment) / np.sum(assignment)
        a = d[0]
        seen_l = comb(n, ell) * a**ell * (1 - a) ** (n - ell)
        num += a * seen_l
        den += seen_l
    return num / den


def simulate_theorem1(
    prior: np.ndarray, n: int, num_labels: int = 2, trials: int = 2000, seed: int = 0
) -> dict[str, float]:
    """Simulate Theorem 1 on random instances (D ~ D_pi, random labels f, Z ~ D^n).

    Learners: A* memorizes every element of Z and predicts a fixed label elsewhere (optimal for
    random labels); "no-singletons" does the same but refuses to fit elements seen once.
    Returns the mean generalisation gap err(no-singletons) - err(A*) with its standard error,
    and the theorem's prediction tau_1 * E[errn_Z(no-singletons, 1)]: tau_1 from pi_bar sampled
    on independent instances (the law of D(x) itself, no mean-field step), the expected number
    of mislabelled singletons measured in the trials.
    """
    rng = np.random.default_rng(seed)
    prior = np.asarray(prior, np.float64)
    n_elements = len(prior)
    miss = 1.0 - 1.0 / num_labels  # chance that a fixed guess is wrong on a random label
    gaps, singleton_errors = np.empty(trials), np.empty(trials)
    for t in range(trials):
        d = rng.choice(prior, n_elements)
        d /= d.sum()
        counts = rng.multinomial(n, d)
        singles = counts == 1
        # Random labels: A* is right on all seen elements; the refuser guesses on singletons.
        wrong = rng.random(n_elements) < miss
        gaps[t] = np.sum(d * (singles & wrong))
        singleton_errors[t] = np.sum(singles & wrong)
    frequencies = []
    for _ in range(max(1, 200_000 // n_elements)):  # independent instances for pi_bar
        d = rng.choice(prior, n_elements)
        frequencies.append(d / d.sum())
    tau_1 = tau(
        marginal_from_samples(np.concatenate(frequencies), n_elements), n, [1], max_atoms=4096
    )[0]
    return {
        "gap": float(gaps.mean()),
        "gap_stderr": float(gaps.std(ddof=1) / np.sqrt(trials)),
        "predicted_gap": float(tau_1 * singleton_errors.mean()),
        "tau_1": float(tau_1),
        "mean_singleton_errors": float(singleton_errors.mean()),
    }
