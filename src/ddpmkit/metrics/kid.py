"""Kernel Inception Distance (Bińkowski et al. 2018): an unbiased estimate of the squared MMD
between two feature distributions with the cubic polynomial kernel k(x, y) = (xᵀy/d + 1)³,
averaged over random subsets (mean ± standard deviation over the subsets)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ddpmkit.errors import ConfigError


@dataclass(frozen=True)
class KID:
    mean: float
    std: float
    subsets: int
    subset_size: int


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (xᵀy/d + 1)³ for all pairs of rows."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased MMD² estimate (Gretton et al. 2012, eq. 3) with the cubic kernel:
    mean of k(x_i, x_j) over i ≠ j, plus the same for y, minus twice the mean of k(x_i, y_j)."""
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ConfigError("KID needs at least 2 samples in each set")
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within_x = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    within_y = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(within_x + within_y - 2.0 * k_xy.mean())


def kernel_inception_distance(
    real: np.ndarray,
    fake: np.ndarray,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> KID:
    """Mean and standard deviation of :func:`mmd2_unbiased` over ``subsets`` pairs of random
    subsets (drawn without replacement within a subset) of ``min(subset_size, len(real),
    len(fake))`` rows each."""
    real = np.asarray(real, dtype=np.float64)
    fake = np.asarray(fake, dtype=np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ConfigError(
            f"KID needs two (N, D) feature arrays of one D, got {real.shape} and {fake.shape}"
        )
    if subsets < 1:
        raise ConfigError(f"the number of KID subsets must be >= 1, got {subsets}")
    size = min(subset_size, len(real), len(fake))
    rng = np.random.default_rng(seed)
    values = np.array(
        [
            mmd2_unbiased(
                real[rng.choice(len(real), size, replace=False)],
                fake[rng.choice(len(fake), size, replace=False)],
            )
            for _ in range(subsets)
        ]
    )
    std = float(values.std(ddof=1)) if subsets > 1 else float("nan")
    return KID(float(values.mean()), std, subsets, size)
