"""Fréchet distance between Gaussian fits of two feature sets (Heusel et al. 2017):

    FD = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)),

statistics in float64, covariance with N - 1. Tr((S1 S2)^(1/2)) is computed without a Schur
square root: with R = S1^(1/2) (eigh), (S1 S2)^(1/2) is similar to (R S2 R)^(1/2), a symmetric
PSD matrix, so the trace is the sum of square roots of the eigenvalues of R S2 R.
"""

import numpy as np
from scipy import linalg


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(features, np.float64).reshape(len(features), -1)
    if len(x) < 2:
        raise ValueError(f"need at least 2 feature vectors for statistics, got {len(x)}")
    return x.mean(axis=0), np.cov(x, rowvar=False, ddof=1)


def sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr((S1 S2)^(1/2)) for symmetric PSD S1, S2."""
    root = sqrt_psd(sigma1)
    values = np.linalg.eigvalsh(root @ sigma2 @ root)
    return float(np.sum(np.sqrt(np.clip(values, 0, None))))


def trace_sqrt_product_eigvals(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr((S1 S2)^(1/2)) as the sum of square roots of the eigenvalues of S1 S2 (real, >= 0 in
    theory)."""
    values = np.linalg.eigvals(sigma1 @ sigma2)
    return float(np.sum(np.sqrt(np.clip(values.real, 0, None))))


def trace_sqrt_product_scipy(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr(sqrtm(S1 S2)) with scipy's Schur square root (pytorch-fid's method), for checking."""
    root = linalg.sqrtm(sigma1 @ sigma2)
    return float(np.trace(root).real)


SQRT_METHODS = {
    "eigh": trace_sqrt_product,
    "eigvals": trace_sqrt_product_eigvals,
    "scipy": trace_sqrt_product_scipy,
}


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, method: str = "eigh"
) -> float:
    diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    value = (
        diff @ diff
        + np.trace(sigma1)
        + np.trace(sigma2)
        - 2.0 * SQRT_METHODS[method](sigma1, sigma2)
    )
    return float(max(value, 0.0))


def frechet_distance_of(features1: np.ndarray, features2: np.ndarray) -> float:
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))
