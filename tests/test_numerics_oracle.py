"""The tests' independent Gaussian oracle (tests/gaussian_oracle.py), checked on its own, and"""

import numpy as np
import pytest

from ddpmkit.schedules import make_schedule
from gaussian_oracle import ALPHA_BAR, eps_coefficients, x0_coefficients

MU, S = 0.1, 0.3


@pytest.mark.parametrize("t", [0, 10, 300, 999])
def test_oracle_is_the_conditional_expectation(t):
    """E[x_0|x_t] and E[ε|x_t] are the L2 projections: the errors have mean 0 and are
    uncorrelated with x_t (Monte Carlo, 400k draws of the forward process, eq. 4)."""
    ab = ALPHA_BAR["linear"](1000)[t]
    gen = np.random.default_rng(t)
    n = 400_000
    x0 = MU + S * gen.normal(size=n)
    eps = gen.normal(size=n)
    xt = np.sqrt(ab) * x0 + np.sqrt(1 - ab) * eps
    for truth, (a, b) in ((x0, x0_coefficients(ab, MU, S)), (eps, eps_coefficients(ab, MU, S))):
        err = truth - (a + b * xt)
        se = err.std() / np.sqrt(n)
        assert abs(err.mean()) < 5 * se
        assert abs(np.mean(err * (xt - xt.mean()))) < 5 * np.std(err * xt) / np.sqrt(n)
    # and the two are tied by eq. 4: x_t = √ᾱ x̂_0 + √(1−ᾱ) ε̂
    (a0, b0), (ae, be) = x0_coefficients(ab, MU, S), eps_coefficients(ab, MU, S)
    assert np.sqrt(ab) * a0 + np.sqrt(1 - ab) * ae == pytest.approx(0.0, abs=1e-15)
    assert np.sqrt(ab) * b0 + np.sqrt(1 - ab) * be == pytest.approx(1.0, rel=1e-14)


@pytest.mark.parametrize("name, T", [("linear", 1000), ("linear", 100), ("cosine", 100)])
def test_oracle_schedules_agree_with_ddpmkit(name, T):
    expected = ALPHA_BAR[name](T)
    np.testing.assert_allclose(make_schedule(name, T).alphas_cumprod.numpy(), expected, rtol=1e-12)
