"""DPM-Solver++(2M), Heun and DDIM driven by the exact denoiser of Gaussian data N(μ, s²).

With the exact denoiser every solver step is affine in x, so the sampler maps x_T to A·x_T + B and
the sample variance is exactly A² (x_T ~ N(0, 1)). The recurrences below re-derive A and B in
numpy, written from the papers' update rules and independent of ddpmkit's code (only the choice of
DPM-Solver++'s and Heun's timesteps is shared, and it is tested separately; DDIM's are written
here); the model is the numpy oracle of
tests/gaussian_oracle.py. The exact probability-flow ODE maps
N(0, 1/ᾱ_T) in x/α space to variance s²(1 + σ̃_T²)/(s² + σ̃_T²) ≈ s², the target as NFE grows.
"""

import numpy as np
import pytest
import torch

from ddpmkit.diffusion import GaussianDiffusion
from ddpmkit.errors import ConfigError
from ddpmkit.samplers import function_evaluations, sample
from ddpmkit.schedules import make_schedule
from ddpmkit.solvers import karras_timesteps, log_snr_timesteps
from gaussian_oracle import GaussianOracle

MU, S = 0.1, 0.3
T = 1000
BETAS = np.linspace(1e-4, 0.02, T)
ALPHA_BAR = np.cumprod(1 - BETAS)
SIGMA_TILDE = np.sqrt((1 - ALPHA_BAR) / ALPHA_BAR)
EXACT_ODE_VARIANCE = S**2 * (1 + SIGMA_TILDE[-1] ** 2) / (S**2 + SIGMA_TILDE[-1] ** 2)


def posterior_x0(x, i):
    """E[x_0 | x_t] at timestep index i, as an affine function of x (numbers or (A, B) pairs)."""
    ab = ALPHA_BAR[i]
    g = np.sqrt(ab) * S**2 / (ab * S**2 + 1 - ab)
    return MU + g * (x - np.sqrt(ab) * MU)


class Affine:
    """a·x_T + b, closed under the operations the solvers use."""

    def __init__(self, a, b):
        self.a, self.b = a, b

    def __add__(self, o):
        return (
            Affine(self.a + o.a, self.b + o.b)
            if isinstance(o, Affine)
            else Affine(self.a, self.b + o)
        )

    __radd__ = __add__

    def __sub__(self, o):
        return self + (-1.0) * o

    def __rsub__(self, o):
        return (-1.0) * self + o

    def __mul__(self, c):
        return Affine(self.a * c, self.b * c)

    __rmul__ = __mul__

    def __truediv__(self, c):
        return Affine(self.a / c, self.b / c)


def derived_dpm_solver_pp(timesteps):
    """Lu et al. 2022b, Algorithm 2 (DPM-Solver++(2M)), written with α, σ, λ per timestep."""
    ts = timesteps[::-1]
    alpha = np.sqrt(ALPHA_BAR)
    sigma = np.sqrt(1 - ALPHA_BAR)
    lam = np.log(alpha / sigma)
    x = Affine(1.0, 0.0)
    x0_prev = None
    for k, t in enumerate(ts):
        x0 = posterior_x0(x, t)
        if k == len(ts) - 1:
            return x0
        s = ts[k + 1]
        h = lam[s] - lam[t]
        if x0_prev is None:
            d = x0
        else:
            r = (lam[t] - lam[ts[k - 1]]) / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
        x = (sigma[s] / sigma[t]) * x - alpha[s] * (np.exp(-h) - 1) * d
        x0_prev = x0


def derived_heun(timesteps):
    """Karras et al. 2022, Algorithm 1 (S_churn = 0): Heun on dx/dσ = (x − D(x; σ))/σ in x/α
    space, Euler for the last step to σ = 0."""
    ts = timesteps[::-1]
    sig = [SIGMA_TILDE[t] for t in ts] + [0.0]

    def denoise(x_scaled, k):
        return posterior_x0(x_scaled * np.sqrt(ALPHA_BAR[ts[k]]), ts[k])

    x = Affine(1.0, 0.0) / np.sqrt(ALPHA_BAR[ts[0]])
    for k in range(len(ts)):
        d = (x - denoise(x, k)) / sig[k]
        x_euler = x + (sig[k + 1] - sig[k]) * d
        if sig[k + 1] == 0:
            x = x_euler
        else:
            d2 = (x_euler - denoise(x_euler, k + 1)) / sig[k + 1]
            x = x + (sig[k + 1] - sig[k]) * 0.5 * (d + d2)
    return x


def derived_ddim(steps):
    """Song et al. 2021, eq. 12 with η = 0 on ``steps`` timesteps evenly spread over [0, T − 1]
    (rounded; a single step starts from pure noise, at T − 1): x_s = √ᾱ_s x̂₀ + √(1 − ᾱ_s) ε̂
    with ε̂ = (x_t − √ᾱ_t x̂₀)/√(1 − ᾱ_t), and ᾱ = 1 after the last step (the sample is x̂₀)."""
    grid = [T - 1] if steps == 1 else np.linspace(0, T - 1, steps)
    ts = sorted({int(round(v)) for v in grid})[::-1]
    x = Affine(1.0, 0.0)
    for k, t in enumerate(ts):
        x0 = posterior_x0(x, t)
        eps = (x - np.sqrt(ALPHA_BAR[t]) * x0) / np.sqrt(1 - ALPHA_BAR[t])
        ab_next = ALPHA_BAR[ts[k + 1]] if k + 1 < len(ts) else 1.0
        x = np.sqrt(ab_next) * x0 + np.sqrt(1 - ab_next) * eps
    return x


DERIVED = {
    "dpm++": lambda k: derived_dpm_solver_pp(log_snr_timesteps(ALPHA_BAR, k)),
    "heun": lambda k: derived_heun(karras_timesteps(ALPHA_BAR, k)),
    "ddim": derived_ddim,
}


def oracle_model(prediction="eps"):
    return GaussianOracle(ALPHA_BAR, MU, S, prediction)


def diffusion(prediction="eps", variance="fixed_small"):
    return GaussianDiffusion(make_schedule("linear", T), prediction=prediction, variance=variance)


def affine_map(sampler, steps, prediction="eps"):
    """Run the sampler on x_T = 0 and x_T = 1 (float64): returns (A, B)."""
    d = diffusion(prediction)
    x_T = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    out = sample(
        oracle_model(prediction),
        d,
        (2, 1),
        sampler=sampler,
        steps=steps,
        clip_x0=False,
        x_T=x_T,
        dtype=torch.float64,
    ).squeeze(1)
    return (out[1] - out[0]).item(), out[0].item()


@pytest.mark.parametrize("sampler", ["dpm++", "heun", "ddim"])
@pytest.mark.parametrize("steps", [1, 2, 5, 10, 20, 50])
def test_solver_matches_the_independent_derivation(sampler, steps):
    a, b = affine_map(sampler, steps)
    expected = DERIVED[sampler](steps)
    assert a == pytest.approx(expected.a, rel=1e-9)
    assert b == pytest.approx(expected.b, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("sampler", ["dpm++", "heun"])
@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_every_prediction_target_gives_the_same_trajectory(sampler, prediction):
    assert affine_map(sampler, 10, prediction) == pytest.approx(affine_map(sampler, 10), rel=1e-9)


@pytest.mark.parametrize("sampler,steps", [("dpm++", 100), ("heun", 50)])
def test_about_100_calls_reach_the_data_variance_within_2_percent(sampler, steps):
    assert 99 <= function_evaluations(sampler, steps) <= 100
    a, b = affine_map(sampler, steps)
    assert abs(a**2 / EXACT_ODE_VARIANCE - 1) < 0.02
    assert abs(a**2 / S**2 - 1) < 0.02
    assert b == pytest.approx(MU, abs=1e-3)


@pytest.mark.parametrize("sampler", ["dpm++", "heun"])
def test_variance_error_shrinks_at_second_order(sampler):
    """Doubling the steps from 20 to 40 cuts the variance error about fourfold (both methods are
    2nd order). Beyond ~80 steps a floor of ~5e-4 takes over: the trained timesteps end at
    σ = √β_1 = 0.01, and the last call's jump to σ = 0 returns E[x_0|x_t], whose variance is
    s²·s²/(s² + σ²), not s²; it is the same for every sampler and far below any image metric."""
    errors = [abs(DERIVED[sampler](k).a ** 2 / EXACT_ODE_VARIANCE - 1) for k in (10, 20, 40)]
    assert errors[0] > errors[1] > errors[2]
    assert 3.0 < errors[1] / errors[2] < 6.0


@pytest.mark.parametrize("sampler,steps", [("dpm++", 10), ("heun", 10)])
def test_monte_carlo_moments_match_the_derivation(sampler, steps):
    d = diffusion()
    n = 40_000
    x = sample(
        oracle_model(),
        d,
        (n, 1),
        sampler=sampler,
        steps=steps,
        clip_x0=False,
        generator=torch.Generator().manual_seed(3),
        dtype=torch.float32,
    )
    expected = DERIVED[sampler](steps)
    variance = expected.a**2
    assert abs(x.mean().item() - expected.b) < 5 * np.sqrt(variance / n)
    assert x.var().item() == pytest.approx(variance, rel=5 * np.sqrt(2 / n))


@pytest.mark.parametrize("sampler,calls", [("dpm++", 7), ("heun", 13), ("ddim", 7)])
def test_network_calls_are_counted_exactly(sampler, calls):
    d = diffusion()
    oracle = oracle_model()
    seen = []

    def model(x, t):
        seen.append(int(t[0]))
        return oracle(x, t)

    sample(model, d, (3, 1), sampler=sampler, steps=7, generator=torch.Generator().manual_seed(0))
    assert len(seen) == calls == function_evaluations(sampler, 7)
    assert seen[0] == T - 1 and min(seen) == 0  # from pure noise down to the first timestep


@pytest.mark.parametrize("sampler", ["dpm++", "heun"])
def test_learned_variance_models_use_their_mean_output_only(sampler):
    d = diffusion(variance="learned_range")
    oracle = oracle_model()

    def model(x, t):
        return torch.cat([oracle(x, t), torch.full_like(x, 0.3)], dim=1)

    x_T = torch.randn(4, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    kw = dict(sampler=sampler, steps=8, clip_x0=False, x_T=x_T, dtype=torch.float64)
    torch.testing.assert_close(
        sample(model, d, (4, 1), **kw), sample(oracle, diffusion(), (4, 1), **kw)
    )


def test_callback_sees_every_step_and_ends_on_the_output():
    d = diffusion()
    steps_seen = []
    out = sample(
        oracle_model(),
        d,
        (5, 1),
        sampler="heun",
        steps=6,
        generator=torch.Generator().manual_seed(0),
        callback=steps_seen.append,
    )
    assert [s.index for s in steps_seen] == list(range(6))
    assert all(s.total == 6 for s in steps_seen)
    torch.testing.assert_close(steps_seen[-1].x, out)


@pytest.mark.parametrize("grid", [log_snr_timesteps, karras_timesteps])
@pytest.mark.parametrize("count", [1, 2, 3, 10, 50, 100, 400, 999, 1000])
def test_grids_have_exactly_the_asked_number_of_distinct_timesteps(grid, count):
    ts = grid(ALPHA_BAR, count)
    assert len(ts) == count and ts == sorted(set(ts))
    assert ts[-1] == T - 1 and (count == 1 or ts[0] == 0)


def test_log_snr_grid_is_uniform_in_lambda_where_timesteps_are_dense_enough():
    """For 10 steps no two λ targets share a timestep: each chosen timestep is the one nearest
    its target, computed here by brute force."""
    lam = 0.5 * np.log(ALPHA_BAR / (1 - ALPHA_BAR))
    targets = np.linspace(lam[0], lam[-1], 10)
    nearest = sorted(int(np.argmin(np.abs(lam - v))) for v in targets)
    assert log_snr_timesteps(ALPHA_BAR, 10) == nearest


def test_karras_grid_follows_the_rho_7_schedule():
    sig = SIGMA_TILDE
    ramp = np.linspace(0, 1, 12)
    targets = (sig[-1] ** (1 / 7) + ramp * (sig[0] ** (1 / 7) - sig[-1] ** (1 / 7))) ** 7
    nearest = sorted(int(np.argmin(np.abs(sig ** (1 / 7) - v ** (1 / 7)))) for v in targets)
    assert karras_timesteps(ALPHA_BAR, 12) == nearest


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(sampler="dpm++", eta=0.5), "eta applies to ddim"),
        (dict(sampler="heun", steps=0), "steps must be between"),
        (dict(sampler="dpm++", steps=T + 1), "steps must be between"),
        (dict(sampler="euler"), "unknown sampler"),
    ],
)
def test_bad_requests_are_config_errors(kwargs, match):
    d = diffusion()
    with pytest.raises(ConfigError, match=match):
        sample(oracle_model(), d, (2, 1), **kwargs)
