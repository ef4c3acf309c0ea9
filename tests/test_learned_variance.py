"""Improved DDPM: learned variances, the hybrid and KL losses, importance sampling of t."""

import math

import pytest
import torch

from ddpmkit.diffusion import DiffusionConfig, GaussianDiffusion
from ddpmkit.errors import ConfigError
from ddpmkit.gaussian import GaussianDataDenoiser
from ddpmkit.samplers import sample
from ddpmkit.schedules import make_schedule
from ddpmkit.timesteps import LossSecondMomentSampler, UniformSampler, make_timestep_sampler


def diffusion(variance="learned_range", loss="hybrid", T=1000, **kw):
    return GaussianDiffusion(make_schedule("linear", T), variance=variance, loss=loss, **kw)


class WithVariance:
    """The exact Gaussian denoiser plus a constant variance output ``v``."""

    def __init__(self, d, v):
        self.inner = GaussianDataDenoiser(d, 0.1, 0.3)
        self.v = v

    def __call__(self, x, t):
        return torch.cat([self.inner(x, t), torch.full_like(x, self.v)], dim=1)


def test_learned_range_interpolates_between_posterior_and_beta():
    d = diffusion()
    x = torch.zeros(3, 1, 2, 2, dtype=torch.float64)
    t = torch.tensor([1, 500, 999])
    small = d.schedule.posterior_log_variance_clipped[t].view(3, 1, 1, 1)
    large = torch.log(d.schedule.betas[t]).view(3, 1, 1, 1)
    for v, expected in ((-1.0, small), (1.0, large), (0.0, (small + large) / 2)):
        log_var = d.log_variance(t, x, torch.full_like(x, v))
        torch.testing.assert_close(log_var, expected.expand_as(x))
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
    a = fixed.nll(GaussianDataDenoiser(fixed, 0.1, 0.3), x0, torch.Generator().manual_seed(0))
    b = learned.nll(WithVariance(learned, -1.0), x0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(a.total, b.total)
    torch.testing.assert_close(a.decoder, b.decoder)


class TwoHeads(torch.nn.Module):
    """Mean head a·x and variance head b, separate parameters, to follow the gradients."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(0.3))
        self.b = torch.nn.Parameter(torch.tensor(0.2))

    def forward(self, x, t):
        return torch.cat([self.a * x, self.b * torch.ones_like(x)], dim=1)


def test_hybrid_loss_trains_the_variance_only_through_l_vlb():
    d = diffusion(T=100)
    x0 = torch.rand(16, 1, 4, 4) * 2 - 1
    t = torch.randint(1, 100, (16,), generator=torch.Generator().manual_seed(0))
    noise = torch.randn(16, 1, 4, 4, generator=torch.Generator().manual_seed(1))
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
    # the value: L_simple + λ·T·L_t (bits/dim)
    step = d.reverse_step(m(d.q_sample(x0, t, noise), t), d.q_sample(x0, t, noise), t)
    vb = d.vb_terms(step, x0, d.q_sample(x0, t, noise), t) / (16 * math.log(2))
    assert hybrid.item() == pytest.approx((simple + 0.001 * 100 * vb.mean()).item(), rel=1e-5)


def test_kl_loss_is_T_times_the_term_in_bits_per_dim():
    d = diffusion(loss="kl", T=50)
    model = WithVariance(d, 0.3)
    x0 = (torch.rand(4, 1, 2, 2, dtype=torch.float64) * 2 - 1).round(decimals=2)
    t = torch.tensor([0, 1, 20, 49])
    noise = torch.randn(4, 1, 2, 2, dtype=torch.float64)
    out = d.training_loss(model, x0, t=t, noise=noise)
    x_t = d.q_sample(x0, t, noise)
    terms = d.vb_terms(d.p_mean_variance(model, x_t, t), x0, x_t, t)
    torch.testing.assert_close(out.per_example, 50 * terms / (4 * math.log(2)))


def test_respaced_sampling_with_learned_variance():
    d = diffusion()
    model = WithVariance(d, 0.0)
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
