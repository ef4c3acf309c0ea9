"""Improved DDPM: learned variances, the hybrid and KL losses, importance sampling of t.

Expected loss values come from an independent numpy/scipy derivation (the posterior of Ho et al.
eq. 6–7, the closed-form Gaussian KL, the decoder's bin mass from scipy.stats.norm), never from
ddpmkit's own ``vb_terms``; the model is the numpy oracle of tests/gaussian_oracle.py.
"""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from ddpmkit.diffusion import DiffusionConfig, GaussianDiffusion, check_learned_variance_respacing
from ddpmkit.errors import ConfigError
from ddpmkit.samplers import sample
from ddpmkit.sampling import integrate
from ddpmkit.sampling.denoiser import as_denoiser
from ddpmkit.sampling.grid import TimeGrid
from ddpmkit.schedules import make_schedule
from ddpmkit.timesteps import LossSecondMomentSampler, UniformSampler, make_timestep_sampler
from gaussian_oracle import GaussianOracle, linear_alpha_bar

MU, S = 0.1, 0.3


def diffusion(variance="learned_range", loss="hybrid", T=1000, **kw):
    return GaussianDiffusion(make_schedule("linear", T), variance=variance, loss=loss, **kw)


# ---------------------------------------------------------------------- independent derivation
def linear_betas(T):
    """β linear from 1e−4 to 0.02 at T = 1000, scaled by 1000/T (Ho et al., §4)."""
    return np.linspace(1e-4 * 1000 / T, 0.02 * 1000 / T, T)


def posterior(x0, x_t, t, T):
    """Mean and variance of q(x_{t−1} | x_t, x_0) (Ho et al., eq. 6–7), t 0-based:
    μ̃ = √ᾱ_{t−1} β_t/(1−ᾱ_t) x_0 + √α_t (1−ᾱ_{t−1})/(1−ᾱ_t) x_t, β̃ = (1−ᾱ_{t−1})/(1−ᾱ_t) β_t."""
    b = linear_betas(T)
    ab = np.cumprod(1 - b)
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    shape = (-1, *([1] * (np.ndim(x0) - 1)))
    bt, abt, abp = (v[t].reshape(shape) for v in (b, ab, ab_prev))
    mean = np.sqrt(abp) * bt / (1 - abt) * x0 + np.sqrt(1 - bt) * (1 - abp) / (1 - abt) * x_t
    return mean, (1 - abp) / (1 - abt) * bt


def log_beta_tilde_clipped(T):
    """log β̃_t with the t = 1 entry (β̃_1 = 0) replaced by β̃_2, as in Ho et al.'s code."""
    b = linear_betas(T)
    ab = np.cumprod(1 - b)
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    var = (1 - ab_prev) / (1 - ab) * b
    return np.log(np.concatenate([[var[1]], var[1:]]))


def learned_range_log_variance(v, t, T):
    """log σ² = v' log β_t + (1 − v') log β̃_t, v' = (v + 1)/2 (Nichol & Dhariwal, eq. 15)."""
    frac = (v + 1) / 2
    return frac * np.log(linear_betas(T)[t]) + (1 - frac) * log_beta_tilde_clipped(T)[t]


def gaussian_kl(m1, v1, m2, v2):
    """KL(N(m1, v1) ‖ N(m2, v2)) = ½(log v2/v1 + (v1 + (m1 − m2)²)/v2 − 1)."""
    return 0.5 * (np.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / v2 - 1)


def decoder_nll(x0, mean, std):
    """−log of the N(mean, std²) mass of x0's bin [x0 − 1/255, x0 + 1/255], edge bins open
    (Ho et al., eq. 13), from scipy's normal CDF."""
    dist = stats.norm(mean, std)
    upper = np.where(x0 > 1 - 1 / 255, 1.0, dist.cdf(x0 + 1 / 255))
    lower = np.where(x0 < -1 + 1 / 255, 0.0, dist.cdf(x0 - 1 / 255))
    return -np.log(upper - lower)


def expected_terms(x0, noise, t, eps_hat, log_var, T):
    """L_{t−1} per example in nats (sum over dimensions): the decoder term at t = 0 (index),
    KL(q(x_{t−1}|x_t,x_0) ‖ N(μ̃(x̂_0, x_t), σ²)) otherwise, with x̂_0 from ε̂ by eq. 4."""
    ab = np.cumprod(1 - linear_betas(T))[t].reshape(-1, *([1] * (x0.ndim - 1)))
    x_t = np.sqrt(ab) * x0 + np.sqrt(1 - ab) * noise
    x0_hat = (x_t - np.sqrt(1 - ab) * eps_hat) / np.sqrt(ab)
    q_mean, q_var = posterior(x0, x_t, t, T)
    p_mean, _ = posterior(x0_hat, x_t, t, T)
    p_var = np.exp(log_var)
    with np.errstate(divide="ignore", invalid="ignore"):  # β̃ = 0 at t = 0: decoder used there
        kl = gaussian_kl(q_mean, q_var, p_mean, p_var).reshape(len(t), -1).sum(1)
    dec = decoder_nll(x0, p_mean, np.sqrt(p_var)).reshape(len(t), -1).sum(1)
    return np.where(t == 0, dec, kl)


# ---------------------------------------------------------------------- models
class WithVariance:
    """The exact Gaussian denoiser (numpy oracle) plus a constant variance output ``v``."""

    def __init__(self, T, v):
        self.inner = GaussianOracle(linear_alpha_bar(T), MU, S)
        self.v = v

    def __call__(self, x, t):
        return torch.cat([self.inner(x, t), torch.full_like(x, self.v)], dim=1)


class TwoHeads(torch.nn.Module):
    """Mean head a·x and variance head b, separate parameters, to follow the gradients."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(0.3, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.tensor(0.2, dtype=torch.float64))

    def forward(self, x, t):
        return torch.cat([self.a * x, self.b * torch.ones_like(x)], dim=1)


# ---------------------------------------------------------------------- tests
def test_learned_range_interpolates_between_posterior_and_beta():
    d = diffusion()
    x = torch.zeros(3, 1, 2, 2, dtype=torch.float64)
    t = torch.tensor([1, 500, 999])
    for v in (-1.0, 1.0, 0.0, 0.37):
        log_var = d.log_variance(t, x, torch.full_like(x, v))
        expected = learned_range_log_variance(v, t.numpy(), 1000).reshape(3, 1, 1, 1)
        np.testing.assert_allclose(log_var.numpy(), np.broadcast_to(expected, x.shape), rtol=1e-12)
    learned = diffusion(variance="learned", loss="kl")
    values = torch.randn(3, 1, 2, 2, dtype=torch.float64)
    assert torch.equal(learned.log_variance(t, x, values), values)


def test_learned_variance_needs_twice_the_channels():
    d = diffusion()
    with pytest.raises(ConfigError, match="model.learned_variance=true"):
        d.training_loss(lambda x, t: x, torch.zeros(2, 1, 4, 4))
    with pytest.raises(ConfigError, match="variance='learned_range'"):
        GaussianDiffusion(make_schedule("linear", 100), loss="hybrid")
    with pytest.raises(ConfigError, match="hybrid"):
        DiffusionConfig(loss="hybrid").validate()


def test_bound_of_learned_range_at_minus_one_equals_fixed_small():
    """v = −1 means σ² = β̃: the bound must equal the fixed-variance one term by term."""
    fixed = GaussianDiffusion(make_schedule("linear", 200))
    learned = diffusion(T=200)
    x0 = torch.round((torch.randn(8, 1, 2, 2, dtype=torch.float64) * 0.3 + 1.1) * 127.5) / 127.5 - 1
    x0 = x0.clamp(-1, 1)
    oracle = GaussianOracle(linear_alpha_bar(200), MU, S)
    a = fixed.nll(oracle, x0, torch.Generator().manual_seed(0))
    b = learned.nll(WithVariance(200, -1.0), x0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(a.total, b.total)
    torch.testing.assert_close(a.decoder, b.decoder)


def test_hybrid_loss_trains_the_variance_only_through_l_vlb():
    d = diffusion(T=100)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(16, 1, 4, 4, generator=gen, dtype=torch.float64) * 2 - 1
    t = torch.randint(1, 100, (16,), generator=gen)
    t[:2] = torch.tensor([0, 99])  # the decoder term and the last step too
    noise = torch.randn(16, 1, 4, 4, generator=gen, dtype=torch.float64)
    m = TwoHeads()
    hybrid = d.training_loss(m, x0, t=t, noise=noise).loss
    hybrid.backward()
    grad_a_hybrid, grad_b_hybrid = m.a.grad.clone(), m.b.grad.clone()
    m.zero_grad()
    simple = ((m(d.q_sample(x0, t, noise), t)[:, :1] - noise) ** 2).mean()
    simple.backward()
    torch.testing.assert_close(grad_a_hybrid, m.a.grad)  # L_vlb leaves the mean alone
    assert grad_b_hybrid.abs() > 0  # only L_vlb reaches the variance:
    assert m.b.grad is None or m.b.grad.item() == 0.0  # L_simple gives it nothing
    # the value: L_simple + λ·T·L_t (bits/dim), L_t derived independently
    x0_np, noise_np, t_np = x0.numpy(), noise.numpy(), t.numpy()
    ab = linear_alpha_bar(100)[t_np].reshape(-1, 1, 1, 1)
    x_t = np.sqrt(ab) * x0_np + np.sqrt(1 - ab) * noise_np
    eps_hat = 0.3 * x_t
    simple_np = np.mean((eps_hat - noise_np) ** 2)
    log_var = learned_range_log_variance(0.2, t_np, 100).reshape(-1, 1, 1, 1)
    terms = expected_terms(x0_np, noise_np, t_np, eps_hat, log_var + 0 * x0_np, 100)
    expected = simple_np + 0.001 * 100 * np.mean(terms / (16 * math.log(2)))
    assert hybrid.item() == pytest.approx(expected, rel=1e-10)


def test_kl_loss_is_T_times_the_term_in_bits_per_dim():
    d = diffusion(loss="kl", T=50)
    model = WithVariance(50, 0.3)
    gen = torch.Generator().manual_seed(3)
    x0 = (torch.rand(6, 1, 2, 2, generator=gen, dtype=torch.float64) * 2 - 1).round(decimals=2)
    x0[0, 0, 0] = torch.tensor([-1.0, 1.0], dtype=torch.float64)  # the open edge bins
    t = torch.tensor([0, 0, 1, 20, 48, 49])
    noise = torch.randn(6, 1, 2, 2, generator=gen, dtype=torch.float64)
    out = d.training_loss(model, x0, t=t, noise=noise)
    x0_np, noise_np, t_np = x0.numpy(), noise.numpy(), t.numpy()
    ab = linear_alpha_bar(50)[t_np].reshape(-1, 1, 1, 1)
    x_t = torch.as_tensor(np.sqrt(ab) * x0_np + np.sqrt(1 - ab) * noise_np)
    eps_hat = model.inner(x_t, t).numpy()
    log_var = learned_range_log_variance(0.3, t_np, 50).reshape(-1, 1, 1, 1) + 0 * x0_np
    terms = expected_terms(x0_np, noise_np, t_np, eps_hat, log_var, 50)
    np.testing.assert_allclose(out.per_example.numpy(), 50 * terms / (4 * math.log(2)), rtol=1e-9)
    assert np.all(terms > 0)


def test_respaced_sampling_with_learned_variance():
    d = diffusion()
    model = WithVariance(1000, 0.0)
    x = sample(
        model,
        d,
        (4000, 1),
        "ddpm",
        steps=50,
        generator=torch.Generator().manual_seed(0),
        clip_x0=False,
        dtype=torch.float64,
    )
    assert abs(x.mean().item() - 0.1) < 0.02 and 0.05 < x.var().item() < 0.13
    y = sample(model, d, (4, 1), "ddim", steps=20, generator=torch.Generator().manual_seed(0))
    assert y.shape == (4, 1)


class RawLogVariance:
    """The exact denoiser plus the raw log σ² = log β̃_t (``variance="learned"``)."""

    def __init__(self, T):
        self.inner = GaussianOracle(linear_alpha_bar(T), MU, S)
        self.log_var = log_beta_tilde_clipped(T)

    def __call__(self, x, t):
        log_var = torch.as_tensor(self.log_var[t.numpy()], dtype=x.dtype).reshape(-1, 1)
        return torch.cat([self.inner(x, t), log_var.expand_as(x)], dim=1)


def test_raw_learned_variance_is_refused_under_respacing():
    """A raw log σ² belongs to the T-step process; respaced ancestral steps need other variances
    (β̃' of the respaced process, up to ~19× larger at 50 of 1000 steps), so fewer steps than T
    is a ConfigError naming both ways out; all T steps, and the variance-free DDIM, still work."""
    T = 100
    d = diffusion(variance="learned", loss="kl", T=T)
    model = RawLogVariance(T)
    kw = dict(clip_x0=False, dtype=torch.float64)
    with pytest.raises(ConfigError, match=r"all 100 steps .*learned_range"):
        sample(model, d, (4, 1), "ddpm", steps=10, generator=torch.Generator().manual_seed(0), **kw)
    with pytest.raises(ConfigError, match="variance='learned'"):  # any respaced grid, any way
        x = torch.zeros(2, 1, dtype=torch.float64)
        integrate(as_denoiser(model, d), x, "ddpm", TimeGrid(d.schedule, tuple(range(0, T, 2))))
    with pytest.raises(ConfigError, match="learned_range"):
        check_learned_variance_respacing("learned", 50, 1000)
    check_learned_variance_respacing("learned_range", 50, 1000)  # the interpolation respaces
    check_learned_variance_respacing("learned", 1000, 1000)
    # all T steps: the raw log β̃ gives exactly the fixed_small sampler (same seed, same noise)
    fixed = GaussianDiffusion(make_schedule("linear", T))
    oracle = GaussianOracle(linear_alpha_bar(T), MU, S)
    for steps in (None, T):
        got = sample(
            model, d, (64, 1), "ddpm", steps, generator=torch.Generator().manual_seed(1), **kw
        )
        want = sample(
            oracle, fixed, (64, 1), "ddpm", generator=torch.Generator().manual_seed(1), **kw
        )
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    same = TimeGrid.spaced(d.schedule, T)  # every step: the trained process, not respaced
    assert same.every_step and same.process is d.schedule
    # DDIM (any η) never reads the variance: fewer steps are fine
    y = sample(model, d, (4, 1), "ddim", 10, eta=0.5, generator=torch.Generator().manual_seed(2))
    assert torch.isfinite(y).all()


# ---------------------------------------------------------------------- importance sampling
def warmed_sampler(table):
    sampler = LossSecondMomentSampler(len(table), history=10, uniform_mass=0.001)
    for _ in range(10):
        sampler.update(torch.arange(len(table)), table)
    return sampler


def test_importance_weights_keep_the_loss_unbiased():
    table = torch.rand(100, generator=torch.Generator().manual_seed(0), dtype=torch.float64) ** 3
    sampler = warmed_sampler(table)
    p = sampler.probabilities()
    assert sampler.warmed_up and p.sum().item() == pytest.approx(1.0)
    expected_p = 0.999 * table / table.sum() + 0.001 / 100  # √E[L²] = L for a constant history
    torch.testing.assert_close(p, expected_p)
    # exact expectation of the weighted loss equals the uniform mean
    weights = 1.0 / (100 * p)
    assert (p * weights * table).sum().item() == pytest.approx(table.mean().item(), rel=1e-12)
    # and Monte Carlo through the public sampler
    t, w = sampler.sample(200_000, torch.device("cpu"), torch.Generator().manual_seed(1))
    estimate = (w.double() * table[t]).mean().item()
    uniform_t, uniform_w = UniformSampler(100).sample(200_000, torch.device("cpu"))
    assert torch.all(uniform_w == 1)
    assert estimate == pytest.approx(table.mean().item(), rel=0.01)
    # it samples the high-loss steps more often than uniform does
    assert (table[t].mean() > table[uniform_t].mean()).item()


def test_importance_sampler_is_uniform_during_warm_up():
    sampler = LossSecondMomentSampler(10, history=3)
    sampler.update(torch.tensor([0, 0, 0, 1]), torch.tensor([5.0, 5.0, 5.0, 1.0]))
    assert not sampler.warmed_up
    torch.testing.assert_close(sampler.probabilities(), torch.full((10,), 0.1, dtype=torch.float64))
    with pytest.raises(ConfigError, match="unknown timestep sampler"):
        make_timestep_sampler("fancy", 10)
