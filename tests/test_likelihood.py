import math

import mpmath
import numpy as np
import pytest
import torch

from ddpmkit.likelihood import (
    discretized_gaussian_log_likelihood,
    nats_to_bits_per_dim,
    normal_kl,
)

LEVELS = torch.linspace(-1.0, 1.0, 256, dtype=torch.float64)


@pytest.mark.parametrize("mean", [-1.3, -1.0, -0.2, 0.0, 0.37, 0.999, 1.0, 2.5])
@pytest.mark.parametrize("std", [1e-4, 1e-3, 2 / 255, 0.05, 0.5, 3.0, 40.0])
def test_bins_sum_to_one(mean, std):
    logp = discretized_gaussian_log_likelihood(
        LEVELS,
        torch.tensor(mean, dtype=torch.float64),
        torch.tensor(math.log(std), dtype=torch.float64),
    )
    assert torch.isfinite(logp).all() or std < 1e-3  # tiny scales may give -inf far from the mean
    assert torch.exp(logp).sum().item() == pytest.approx(1.0, abs=1e-10)


def _mp_log_prob(x, mean, std):
    """Reference with 60-digit arithmetic: the Gaussian mass of x's bin, open at the edges,
    integrated on the side of the mean where it does not cancel."""
    mpmath.mp.dps = 60
    lo = -mpmath.inf if x < -1 + 1 / 255 else (mpmath.mpf(x) - mpmath.mpf(1) / 255 - mean) / std
    hi = mpmath.inf if x > 1 - 1 / 255 else (mpmath.mpf(x) + mpmath.mpf(1) / 255 - mean) / std
    if lo != -mpmath.inf and lo > 0:  # upper tail: use survival functions
        lo, hi = -hi, -lo
    mass = mpmath.ncdf(hi) - mpmath.ncdf(lo)
    return float(mpmath.log(mass))


@pytest.mark.parametrize(
    "x_index, mean, std",
    [
        (0, -1.0, 0.01),
        (0, 0.5, 0.1),
        (255, 1.0, 0.02),
        (255, -0.5, 0.2),
        (128, 0.004, 0.003),
        (10, 0.9, 0.05),
        (200, -0.9, 0.08),
        (254, 0.99, 1e-3),
        (1, -0.2, 0.05),
    ],
)
def test_matches_high_precision_reference_including_tails(x_index, mean, std):
    x = LEVELS[x_index]
    got = discretized_gaussian_log_likelihood(
        x, torch.tensor(mean, dtype=torch.float64), torch.tensor(math.log(std), dtype=torch.float64)
    ).item()
    expected = _mp_log_prob(float(x), mpmath.mpf(mean), mpmath.mpf(std))
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_edge_bins_are_open():
    # a Gaussian centred far outside [-1, 1] puts (almost) all its mass in the edge bin
    lp = discretized_gaussian_log_likelihood(
        torch.tensor([1.0, -1.0], dtype=torch.float64),
        torch.tensor([5.0, -5.0], dtype=torch.float64),
        torch.zeros(2, dtype=torch.float64),
    )
    assert torch.allclose(
        torch.exp(lp),
        torch.tensor(
            [1 - 0.5 * math.erfc((5 - 1 + 1 / 255) / math.sqrt(2))] * 2, dtype=torch.float64
        ),
    )


def test_normal_kl_closed_form_and_monte_carlo():
    m1, v1, m2, v2 = 0.3, 0.5, -0.2, 1.7
    kl = normal_kl(
        *(torch.tensor(v, dtype=torch.float64) for v in (m1, math.log(v1), m2, math.log(v2)))
    )
    expected = 0.5 * (math.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / v2 - 1)
    assert kl.item() == pytest.approx(expected, rel=1e-12)
    gen = np.random.default_rng(0)
    x = gen.normal(m1, math.sqrt(v1), 2_000_000)
    logp = -0.5 * np.log(2 * np.pi * v1) - (x - m1) ** 2 / (2 * v1)
    logq = -0.5 * np.log(2 * np.pi * v2) - (x - m2) ** 2 / (2 * v2)
    assert np.mean(logp - logq) == pytest.approx(expected, abs=3e-3)
    same = normal_kl(torch.tensor(1.0), torch.tensor(0.2), torch.tensor(1.0), torch.tensor(0.2))
    assert same.item() == pytest.approx(0.0, abs=1e-7)


def test_bits_per_dim():
    assert nats_to_bits_per_dim(3072 * math.log(2) * 3.5, 3072) == pytest.approx(3.5)
