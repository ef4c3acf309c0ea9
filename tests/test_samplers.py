"""Samplers driven by the exact denoiser of Gaussian data N(μ, s²), whose moments after sampling
follow scalar recurrences derived here by hand (each sampler step is affine in x_t). The denoiser
is the independent numpy oracle of tests/gaussian_oracle.py, not ddpmkit.gaussian."""

import numpy as np
import pytest
import torch

from ddpmkit.diffusion import GaussianDiffusion
from ddpmkit.errors import ConfigError
from ddpmkit.samplers import sample
from ddpmkit.sampling import initial_noise, integrate
from ddpmkit.sampling.denoiser import as_denoiser
from ddpmkit.sampling.grid import TimeGrid, respaced_schedule
from ddpmkit.schedules import make_schedule
from gaussian_oracle import GaussianOracle, eps_coefficients, x0_coefficients

MU, S = 0.1, 0.3
T = 1000
BETAS = np.linspace(1e-4, 0.02, T)  # Ho et al.'s linear schedule, computed independently
ALPHA_BAR = np.cumprod(1 - BETAS)


def gain(ab):
    """E[x0|x_t] = μ + g (x_t − √ᾱ μ)."""
    return np.sqrt(ab) * S**2 / (ab * S**2 + 1 - ab)


def ancestral_moments(small_variance=True, timesteps=None):
    """Ancestral sampling over all steps or a subset (respaced: β'_i = 1 − ᾱ_{s_i}/ᾱ_{s_{i−1}})."""
    ts = list(range(T)) if timesteps is None else timesteps
    m, v = 0.0, 1.0
    for i in range(len(ts) - 1, -1, -1):
        ab, ab_prev = ALPHA_BAR[ts[i]], (ALPHA_BAR[ts[i - 1]] if i else 1.0)
        b, t = 1 - ab / ab_prev, i
        c1 = np.sqrt(ab_prev) * b / (1 - ab)
        c2 = np.sqrt(1 - b) * (1 - ab_prev) / (1 - ab)
        g = gain(ab)
        m = c1 * (MU + g * (m - np.sqrt(ab) * MU)) + c2 * m
        noise_var = 0.0
        if t > 0:
            post = b * (1 - ab_prev) / (1 - ab)
            noise_var = post if small_variance else b
        v = (c1 * g + c2) ** 2 * v + noise_var
    return m, v


def ddim_moments(steps):
    ts = sorted({int(round(x)) for x in np.linspace(0, T - 1, steps)})
    m, v = 0.0, 1.0
    for i in range(len(ts) - 1, -1, -1):
        ab = ALPHA_BAR[ts[i]]
        ab_prev = ALPHA_BAR[ts[i - 1]] if i else 1.0
        g = gain(ab)
        k = np.sqrt(1 - ab_prev) / np.sqrt(1 - ab)
        a = (np.sqrt(ab_prev) - k * np.sqrt(ab)) * g + k
        m = (np.sqrt(ab_prev) - k * np.sqrt(ab)) * (MU + g * (m - np.sqrt(ab) * MU)) + k * m
        v = a**2 * v
    return m, v


def ddim_eta_moments(steps, eta):
    """Mean and variance of DDIM(η) from x_T ~ N(0, 1) (Song et al. 2021, eq. 12 and 16):
    x_{t−1} = √ᾱ_{t−1} x̂_0 + √(1 − ᾱ_{t−1} − σ²) ε̂ + σ z with
    σ = η √((1 − ᾱ_{t−1})/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t−1}). With the exact denoiser x̂_0 and ε̂ are
    affine in x_t (coefficients from Gaussian conditioning), so x_{t−1} = A x_t + B + σ z and the
    moments follow m ← A m + B, v ← A² v + σ². The last step (to ᾱ = 1) has σ = 0."""
    ts = sorted({int(round(x)) for x in np.linspace(0, T - 1, steps)})
    m, v = 0.0, 1.0
    for i in range(len(ts) - 1, -1, -1):
        ab = ALPHA_BAR[ts[i]]
        ab_prev = ALPHA_BAR[ts[i - 1]] if i else 1.0
        sigma = eta * np.sqrt((1 - ab_prev) / (1 - ab)) * np.sqrt(1 - ab / ab_prev)
        x0_a, x0_b = x0_coefficients(ab, MU, S)
        eps_a, eps_b = eps_coefficients(ab, MU, S)
        direction = np.sqrt(1 - ab_prev - sigma**2)
        a = np.sqrt(ab_prev) * x0_b + direction * eps_b
        b = np.sqrt(ab_prev) * x0_a + direction * eps_a
        m, v = a * m + b, a**2 * v + sigma**2
    return m, v


def run(sampler, steps, dtype=torch.float64, n=40_000, variance="fixed_small", seed=0, eta=0.0):
    d = GaussianDiffusion(make_schedule("linear", T), variance=variance)
    model = GaussianOracle(ALPHA_BAR, MU, S)
    gen = torch.Generator().manual_seed(seed)
    x = sample(
        model,
        d,
        (n, 1),
        sampler=sampler,
        steps=steps,
        eta=eta,
        clip_x0=False,
        generator=gen,
        dtype=dtype,
    )
    return x.mean().item(), x.var().item()


def assert_moments(measured, expected, n=40_000):
    (m, v), (em, ev) = measured, expected
    assert abs(m - em) < 5 * np.sqrt(ev / n)
    assert v == pytest.approx(ev, rel=5 * np.sqrt(2 / n))


def test_derivation_reproduces_the_expected_shrinkage():
    """The numbers the issue quotes, from the recurrences alone."""
    m, v = ancestral_moments()
    assert m == pytest.approx(MU, abs=1e-3) and 0.97 < v / S**2 < 0.99
    _, v = ddim_moments(1000)
    assert 0.99 < v / S**2 < 1.01
    _, v = ddim_moments(50)
    assert 0.82 < v / S**2 < 0.87  # DDIM's discretisation shrinks the variance by ~15%


@pytest.mark.slow
def test_ancestral_sampling_matches_derivation_float64():
    assert_moments(run("ddpm", None), ancestral_moments())


@pytest.mark.slow
def test_ancestral_fixed_large_matches_derivation():
    assert_moments(run("ddpm", None, variance="fixed_large"), ancestral_moments(False))


@pytest.mark.slow
def test_ancestral_float32_within_three_percent():
    m, v = run("ddpm", None, dtype=torch.float32)
    assert abs(v / S**2 - 1) < 0.04 and abs(m - MU) < 0.01


@pytest.mark.parametrize("steps", [10, 50, 1000])
@pytest.mark.slow
def test_ddim_matches_derivation(steps):
    assert_moments(run("ddim", steps), ddim_moments(steps))


def test_ddim_eta_derivation_is_consistent():
    """η = 0 gives the deterministic recurrence above; η = 1 is ancestral sampling with σ² = β̃
    on the respaced process (Song et al. 2021, §4.1), two derivations that share no code."""
    for steps in (10, 20, 50):
        ts = sorted({int(round(x)) for x in np.linspace(0, T - 1, steps)})
        np.testing.assert_allclose(ddim_eta_moments(steps, 0.0), ddim_moments(steps), rtol=1e-12)
        np.testing.assert_allclose(
            ddim_eta_moments(steps, 1.0), ancestral_moments(timesteps=ts), rtol=1e-10
        )
    # at 20 steps the noise level matters far beyond Monte Carlo error: 0.629 / 0.605 / 0.500 s²
    variances = [ddim_eta_moments(20, eta)[1] / S**2 for eta in (0.0, 0.5, 1.0)]
    assert variances[0] > variances[1] * 1.03 and variances[1] > variances[2] * 1.15


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_stochastic_ddim_matches_derivation(eta):
    n = 200_000
    measured = run("ddim", 20, n=n, eta=eta, seed=7)
    assert_moments(measured, ddim_eta_moments(20, eta), n=n)


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_ddim_is_parameterisation_independent(prediction):
    def go(pred):
        d = GaussianDiffusion(make_schedule("linear", T), prediction=pred)
        x_T = torch.randn(64, 1, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        return sample(
            GaussianOracle(ALPHA_BAR, MU, S, pred),
            d,
            (64, 1),
            "ddim",
            20,
            clip_x0=False,
            x_T=x_T,
            dtype=torch.float64,
        )

    torch.testing.assert_close(go(prediction), go("eps"), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize(
    "sampler, steps, eta", [("ddpm", None, 0.0), ("ddpm", 25, 0.0), ("ddim", 20, 1.0)]
)
def test_same_seed_same_images(sampler, steps, eta):
    d = GaussianDiffusion(make_schedule("cosine", 100))
    model = GaussianOracle.for_schedule("cosine", 100, MU, S)

    def go(seed):
        gen = torch.Generator().manual_seed(seed)
        return sample(model, d, (3, 1, 4, 4), sampler, steps, eta=eta, generator=gen)

    assert torch.equal(go(1), go(1))
    assert not torch.equal(go(1), go(2))


def test_callback_sees_every_step_in_order():
    d = GaussianDiffusion(make_schedule("linear", 1000))
    seen = []
    sample(
        GaussianOracle(ALPHA_BAR, MU, S),
        d,
        (2, 1, 3, 3),
        "ddim",
        steps=7,
        callback=lambda s: seen.append((s.index, s.total, s.t, s.x.shape, s.pred_x0.shape)),
    )
    assert [s[0] for s in seen] == list(range(7))
    assert all(s[1] == 7 for s in seen)
    ts = [s[2] for s in seen]
    assert ts[0] == 999 and ts[-1] == 0 and ts == sorted(ts, reverse=True)
    assert all(s[3] == (2, 1, 3, 3) == s[4] for s in seen)


def test_respaced_ancestral_with_all_steps_equals_plain_ancestral():
    d = GaussianDiffusion(make_schedule("linear", 200))
    model = GaussianOracle.for_schedule("linear", 200, MU, S)
    # the process respaced onto every step (β' = 1 − ᾱ_t/ᾱ_{t−1}, recomputed) as the grid's base
    respaced = respaced_schedule(d.schedule, list(range(200)))
    grid = TimeGrid(respaced, tuple(range(200)))
    calls = []

    def counted(x, t):
        calls.append(t)
        return model(x, t)

    plain = sample(model, d, (16, 1), "ddpm", generator=torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(3)
    x = initial_noise((16, 1), generator)
    through = integrate(as_denoiser(counted, d), x, "ddpm", grid, noise=generator)
    torch.testing.assert_close(through, plain, rtol=1e-6, atol=1e-7)
    assert len(calls) == 200


def test_respaced_ancestral_calls_the_model_at_original_timesteps():
    d = GaussianDiffusion(make_schedule("linear", 1000))
    model = GaussianOracle(ALPHA_BAR, MU, S)
    seen = []

    def spy(x, t):
        seen.append(int(t[0]))
        return model(x, t)

    x = sample(
        spy,
        d,
        (40_000, 1),
        "ddpm",
        steps=100,
        clip_x0=False,
        generator=torch.Generator().manual_seed(0),
        dtype=torch.float64,
    )
    assert len(seen) == 100 and seen[0] == 999 and seen[-1] == 0
    ts = sorted({int(round(x)) for x in np.linspace(0, T - 1, 100)})
    expected = ancestral_moments(timesteps=ts)
    assert_moments((x.mean().item(), x.var().item()), expected)
    # β̃ of the respaced process is much smaller than β': at 100 steps the spread shrinks ~17%
    assert 0.8 < expected[1] / S**2 < 0.87


def test_bad_arguments():
    d = GaussianDiffusion(make_schedule("linear", 100))
    model = GaussianOracle.for_schedule("linear", 100, MU, S)
    with pytest.raises(ConfigError, match="unknown sampler 'euler'"):
        sample(model, d, (1, 1), "euler")
    with pytest.raises(ConfigError, match="between 1 and the model's 100 steps"):
        sample(model, d, (1, 1), "ddim", steps=500)
    with pytest.raises(ConfigError, match="eta"):
        sample(model, d, (1, 1), "ddim", eta=-1)
