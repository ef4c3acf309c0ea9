import math

import mpmath
import numpy as np
import pytest
import torch
from scipy import stats

from ddpmkit.likelihood import (
    LOG_MIN_BIN_MASS,
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
    assert torch.isfinite(logp).all()  # the floor: even 1e-4 scales far from the mean
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


# ---------------------------------------------------------------------- the floor, extreme inputs
EXTREME_X = [-1.0, -1.0 + 2 / 255, 0.0, 1.0 - 2 / 255, 1.0]
EXTREME_MEAN = [-1e30, -1e6, -50.0, -1.0, -0.5, 0.0, 1e-3, 1 / 255, 1.0, 50.0, 1e6, 1e30]
EXTREME_LOG_SCALE = [-1e4, -100.0, -40.0, -20.0, -7.0, -3.0, 0.0, 3.0, 20.0, 100.0, 1e4]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_extreme_inputs_give_finite_values_and_gradients(dtype):
    grid = torch.cartesian_prod(
        torch.tensor(EXTREME_X, dtype=torch.float64),
        torch.tensor(EXTREME_MEAN, dtype=torch.float64),
        torch.tensor(EXTREME_LOG_SCALE, dtype=torch.float64),
    ).to(dtype)
    if dtype == torch.float16:  # its range ends at 65504
        grid = grid[(grid.abs() < 6e4).all(dim=1)]
    x = grid[:, 0]
    mean = grid[:, 1].clone().requires_grad_(True)
    log_scale = grid[:, 2].clone().requires_grad_(True)
    logp = discretized_gaussian_log_likelihood(x, mean, log_scale)
    logp.sum().backward()
    assert logp.dtype == torch.promote_types(dtype, torch.float32)
    assert torch.isfinite(logp).all()
    assert (logp <= 0).all() and (logp >= LOG_MIN_BIN_MASS).all()
    assert torch.isfinite(mean.grad).all() and torch.isfinite(log_scale.grad).all()


def test_far_outside_the_bin_with_tiny_scale_hits_the_floor_with_zero_gradient():
    mean = torch.tensor([0.5, 0.5], dtype=torch.float32, requires_grad=True)
    log_scale = torch.tensor([-20.0, -60.0], requires_grad=True)
    logp = discretized_gaussian_log_likelihood(torch.zeros(2), mean, log_scale)
    logp.sum().backward()
    assert logp.tolist() == pytest.approx([LOG_MIN_BIN_MASS] * 2)
    assert mean.grad.tolist() == [0.0, 0.0] and log_scale.grad.tolist() == [0.0, 0.0]
    # above the floor (34σ away, log mass ≈ −594) the gradient is alive and points back to the bin
    mean = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    logp = discretized_gaussian_log_likelihood(
        torch.tensor(70 / 255, dtype=torch.float64), mean, torch.tensor(math.log(0.008))
    )
    logp.backward()
    assert LOG_MIN_BIN_MASS < logp.item() < -500 and mean.grad.item() > 0


def _scipy_log_mass(x, mean, std):
    """log of the N(mean, std²) mass of each x's bin, edge bins open, as a plain CDF difference
    from scipy.stats.norm (an independent implementation; accurate while the mass is not tiny)."""
    dist = stats.norm(mean, std)
    upper = np.where(x > 1 - 1 / 255, 1.0, dist.cdf(x + 1 / 255))
    lower = np.where(x < -1 + 1 / 255, 0.0, dist.cdf(x - 1 / 255))
    with np.errstate(divide="ignore"):  # masses lost to rounding are dropped by the caller
        return np.log(upper - lower)


def _normal_range(n=20_000, seed=0):
    """Levels of the 8-bit grid, σ from 1e-3 to 100 (bins wide and narrow against σ) and means
    within a few σ of x (masses ≥ 1e-8, where the plain CDF difference keeps ≥ 8 digits)."""
    gen = np.random.default_rng(seed)
    x = np.linspace(-1, 1, 256)[gen.integers(0, 256, n)]
    x[:4] = [-1.0, 1.0, -1.0, 1.0]
    std = np.exp(gen.uniform(math.log(1e-3), math.log(100.0), n))
    mean = x + gen.normal(size=n) * std * gen.choice([0.1, 1.0, 3.0], n)
    expected = _scipy_log_mass(x, mean, std)
    keep = expected > math.log(1e-8)
    return x[keep], mean[keep], std[keep], expected[keep]


def test_normal_range_is_unchanged_against_scipy_cdf_differences():
    x, mean, std, expected = _normal_range()
    assert len(x) > 15_000
    got = discretized_gaussian_log_likelihood(
        torch.tensor(x), torch.tensor(mean), torch.log(torch.tensor(std))
    ).numpy()
    # the plain difference of two CDFs near 1 loses ~1e-16/mass relative: tolerance to match
    tolerance = 1e-9 + 1e-15 / np.exp(expected)
    assert np.all(np.abs(got - expected) <= tolerance), np.max(np.abs(got - expected) / tolerance)
    # float32 agrees to float32 precision (the inputs themselves are rounded to float32)
    got32 = discretized_gaussian_log_likelihood(
        torch.tensor(x, dtype=torch.float32),
        torch.tensor(mean, dtype=torch.float32),
        torch.log(torch.tensor(std, dtype=torch.float32)),
    ).numpy()
    np.testing.assert_allclose(got32, expected, rtol=1e-4, atol=1e-4)


def _mp_gradients(x, mean, std):
    """(∂/∂mean, ∂/∂log σ) of log M, M = Φ(u) − Φ(l), u, l = (x ± 1/255 − mean)/σ, in 40-digit
    arithmetic: ∂u/∂mean = −1/σ and ∂u/∂log σ = −u give (φ(l) − φ(u))/(σM) and
    (l φ(l) − u φ(u))/M, with u = ∞ / l = −∞ (and their φ terms 0) for the open edge bins."""
    mpmath.mp.dps = 40
    x, mean, std = mpmath.mpf(x), mpmath.mpf(mean), mpmath.mpf(std)
    hw = mpmath.mpf(1) / 255
    u = mpmath.inf if x > 1 - hw else (x + hw - mean) / std
    lo = -mpmath.inf if x < -1 + hw else (x - hw - mean) / std
    if lo != -mpmath.inf and lo > 0:  # upper tail: the same mass as a difference of survivals
        mass = mpmath.ncdf(-lo) - (0 if u == mpmath.inf else mpmath.ncdf(-u))
    else:
        mass = (1 if u == mpmath.inf else mpmath.ncdf(u)) - mpmath.ncdf(lo)
    pdf_u = 0 if u == mpmath.inf else mpmath.npdf(u)
    pdf_l = 0 if lo == -mpmath.inf else mpmath.npdf(lo)
    u_pdf_u = 0 if u == mpmath.inf else u * pdf_u
    l_pdf_l = 0 if lo == -mpmath.inf else lo * pdf_l
    return float((pdf_l - pdf_u) / (std * mass)), float((l_pdf_l - u_pdf_u) / mass)


def test_gradients_in_the_normal_range_match_high_precision_derivatives():
    x, mean, std, _ = _normal_range(n=300, seed=1)
    mean_t = torch.tensor(mean, requires_grad=True)
    log_scale = torch.log(torch.tensor(std)).requires_grad_(True)
    discretized_gaussian_log_likelihood(torch.tensor(x), mean_t, log_scale).sum().backward()
    expected = np.array([_mp_gradients(*args) for args in zip(x, mean, std, strict=True)])
    np.testing.assert_allclose(mean_t.grad.numpy(), expected[:, 0], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(log_scale.grad.numpy(), expected[:, 1], rtol=1e-8, atol=1e-10)
