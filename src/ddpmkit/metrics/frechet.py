"""Fréchet distance between Gaussians fitted to two feature sets (the FID of Heusel et al. 2017).

d² = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^{1/2}). The trace of the matrix square root is computed as
Tr((Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2}) — the same eigenvalues, but of a symmetric positive semi-definite
matrix, so two symmetric eigendecompositions in float64 replace a general (and, for the nearly
singular covariances of few samples, unstable) ``sqrtm`` with its complex round-off.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ddpmkit.errors import ConfigError


@dataclass(frozen=True)
class GaussianStats:
    """Mean and covariance (float64) of a feature set, and how many samples they came from."""

    mean: np.ndarray
    cov: np.ndarray
    n: int

    @classmethod
    def of(cls, features: np.ndarray) -> GaussianStats:
        """Sample mean and unbiased covariance of an (N, D) array, N ≥ 2."""
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or len(features) < 2:
            raise ConfigError(f"need an (N, D) feature array with N >= 2, got {features.shape}")
        return cls(features.mean(axis=0), np.cov(features, rowvar=False), len(features))


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric PSD matrix (negative round-off clipped to 0)."""
    values, vectors = np.linalg.eigh(0.5 * (matrix + matrix.T))
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def trace_sqrt_product(cov1: np.ndarray, cov2: np.ndarray) -> float:
    """Tr((Σ₁ Σ₂)^{1/2}) = Σ √λᵢ(Σ₁^{1/2} Σ₂ Σ₁^{1/2})."""
    root1 = _sqrt_psd(np.asarray(cov1, dtype=np.float64))
    inner = root1 @ np.asarray(cov2, dtype=np.float64) @ root1
    values = np.linalg.eigvalsh(0.5 * (inner + inner.T))
    return float(np.sqrt(np.clip(values, 0.0, None)).sum())


def frechet_distance(a: GaussianStats, b: GaussianStats) -> float:
    """The squared Fréchet (2-Wasserstein) distance between N(μ_a, Σ_a) and N(μ_b, Σ_b)."""
    if a.mean.shape != b.mean.shape:
        raise ConfigError(
            f"feature dimensions differ ({a.mean.shape[0]} vs {b.mean.shape[0]}): were both sets "
            "embedded with the same extractor?"
        )
    diff = a.mean - b.mean
    value = diff @ diff + np.trace(a.cov) + np.trace(b.cov) - 2.0 * trace_sqrt_product(a.cov, b.cov)
    return float(max(value, 0.0))
