import math

import numpy as np
import pytest
import torch

from ddpmkit.errors import ConfigError
from ddpmkit.schedules import SCHEDULE_NAMES, make_schedule


def test_linear_matches_ho_et_al_and_scales_with_T():
    s = make_schedule("linear", 1000)
    assert s.betas.dtype == torch.float64
    assert s.betas[0].item() == pytest.approx(1e-4, rel=1e-12)
    assert s.betas[-1].item() == pytest.approx(0.02, rel=1e-12)
    np.testing.assert_allclose(s.betas.numpy(), np.linspace(1e-4, 0.02, 1000), rtol=1e-12)
    s500 = make_schedule("linear", 500)
    assert s500.betas[0].item() == pytest.approx(2e-4, rel=1e-12)
    assert s500.betas[-1].item() == pytest.approx(0.04, rel=1e-12)


def test_cosine_alpha_bar_follows_closed_form_until_clipping():
    T, s = 1000, 0.008
    sched = make_schedule("cosine", T)
    t = np.arange(T + 1) / T
    f = np.cos((t + s) / (1 + s) * np.pi / 2) ** 2
    alpha_bar = f / f[0]
    betas = np.minimum(1 - alpha_bar[1:] / alpha_bar[:-1], 0.999)
    np.testing.assert_allclose(sched.betas.numpy(), betas, rtol=1e-10)
    assert sched.betas.max().item() == pytest.approx(0.999)  # the last step is clipped
    # before the clipped tail, ᾱ_t equals f(t/T)/f(0) itself
    np.testing.assert_allclose(sched.alphas_cumprod.numpy()[:-1], alpha_bar[1:-1], rtol=1e-9)


def test_quadratic_and_sigmoid_formulas():
    q = make_schedule("quadratic", 1000).betas.numpy()
    np.testing.assert_allclose(np.sqrt(q), np.linspace(0.01, math.sqrt(0.02), 1000), rtol=1e-12)
    sg = make_schedule("sigmoid", 1000).betas.numpy()
    x = np.linspace(-6, 6, 1000)
    np.testing.assert_allclose(sg, 1 / (1 + np.exp(-x)) * (0.02 - 1e-4) + 1e-4, rtol=1e-12)
    assert np.all(np.diff(sg) > 0) and np.all(np.diff(q) > 0)


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_derived_arrays_against_direct_numpy(name):
    s = make_schedule(name, 200)
    b = s.betas.numpy()
    ab = np.cumprod(1 - b)
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    np.testing.assert_allclose(s.alphas_cumprod.numpy(), ab, rtol=1e-12)
    np.testing.assert_allclose(
        s.posterior_variance.numpy(), b * (1 - ab_prev) / (1 - ab), rtol=1e-12
    )
    clipped = s.posterior_log_variance_clipped.numpy()
    assert clipped[0] == pytest.approx(clipped[1])
    np.testing.assert_allclose(clipped[1:], np.log((b * (1 - ab_prev) / (1 - ab))[1:]), rtol=1e-12)
    assert np.all(np.diff(ab) < 0) and 0 < ab[-1] < ab[0] < 1


@pytest.mark.parametrize(
    "name, steps, message",
    [
        ("triangular", 1000, "unknown schedule 'triangular'"),
        ("linear", 0, "integer >= 1"),
        ("linear", -5, "integer >= 1"),
        ("linear", 10, "must lie in (0, 1)"),  # 1000/T scaling pushes β past 1
    ],
)
def test_bad_schedules_raise_clear_errors(name, steps, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_schedule(name, steps)


def test_single_step_schedule_is_valid():
    s = make_schedule("cosine", 1)
    assert s.num_steps == 1
    assert torch.isfinite(s.posterior_log_variance_clipped).all()


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_continuous_schedule_is_the_limit_of_the_discrete_one(name):
    """ᾱ(t/T) of the continuous view tracks the discrete ᾱ_t at T = 1000: log ∏(1 − β_s) and
    −∫β differ by at most Σ β_s² (from −log(1 − β) − β ≤ β² for β ≤ ½) plus the Riemann-sum
    error of a monotone β, at most 2·max β."""
    from ddpmkit.schedules import ContinuousSchedule

    T = 1000
    sched = make_schedule(name, T)
    discrete = sched.alphas_cumprod.numpy()
    tau = torch.arange(1, T + 1, dtype=torch.float64) / T
    continuous = ContinuousSchedule(name).alpha_bar(tau).numpy()
    betas = sched.betas.numpy()
    if name == "cosine":  # defined through ᾱ(t/T) itself: equal up to the clipped last step
        np.testing.assert_allclose(continuous[:-1], discrete[:-1], rtol=1e-9)
    else:
        bound = np.cumsum(betas**2) + 2 * betas.max()
        assert np.all(np.abs(np.log(continuous) - np.log(discrete)) <= bound)
        assert np.abs(np.log(continuous) - np.log(discrete)).max() > 1e-3  # not trivially equal
    # with a thousand steps the discretisation reproduces the continuous ᾱ(t/T) exactly
    again = ContinuousSchedule(name).discretize(T).alphas_cumprod.numpy()
    np.testing.assert_allclose(again[:-1], continuous[:-1], rtol=1e-9)


def test_signal_rates_bound_alpha_bar_and_match_the_ddim_write_up():
    from ddpmkit.schedules import ContinuousSchedule

    sched = ContinuousSchedule("cosine", min_signal_rate=0.02, max_signal_rate=0.95)
    tau = torch.linspace(0, 1, 101, dtype=torch.float64)
    rates = torch.sqrt(sched.alpha_bar(tau))
    assert rates[0].item() == pytest.approx(0.95, rel=1e-12)
    assert rates[-1].item() == pytest.approx(0.02, rel=1e-12)
    start, end = math.acos(0.95), math.acos(0.02)
    expected = torch.cos(start + tau * (end - start))  # diffusion_schedule of the write-up
    torch.testing.assert_close(rates, expected, rtol=1e-12, atol=1e-12)
    for name in ("linear", "sigmoid"):
        r = torch.sqrt(ContinuousSchedule(name, 0.02, 0.95).alpha_bar(tau))
        assert r[0].item() == pytest.approx(0.95) and r[-1].item() == pytest.approx(0.02)
        assert bool((r[1:] < r[:-1]).all())
    any_steps = sched.discretize(37)
    assert any_steps.num_steps == 37
    assert any_steps.alphas_cumprod[-1].item() == pytest.approx(0.02**2, rel=1e-9)


def test_continuous_schedule_errors():
    from ddpmkit.schedules import ContinuousSchedule

    with pytest.raises(ConfigError, match="both"):
        ContinuousSchedule("cosine", min_signal_rate=0.1)
    with pytest.raises(ConfigError, match="0 < min_signal_rate"):
        ContinuousSchedule("cosine", 0.9, 0.5)
    with pytest.raises(ConfigError, match="unknown schedule"):
        ContinuousSchedule("nope")
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        ContinuousSchedule().alpha_bar(1.5)
