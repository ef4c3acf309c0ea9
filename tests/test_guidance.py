"""Classifier-free guidance on a two-class Gaussian mixture, whose conditional and unconditional
exact denoisers are known in closed form (derived here, independently of ddpmkit):

    x_0 | y ~ N(m_y, s²),  x_t = √ᾱ x_0 + √(1−ᾱ) ε
    E[x_0 | x_t, y] = m_y + √ᾱ s² / (ᾱ s² + 1 − ᾱ) · (x_t − √ᾱ m_y)
    E[x_0 | x_t]    = Σ_y p(y | x_t) E[x_0 | x_t, y],  p(y | x_t) ∝ π_y N(x_t; √ᾱ m_y, ᾱ s² + 1 − ᾱ)

Guidance with w = 0 must sample the class-conditional distribution; for w > 0 the deterministic
DDIM sampler must follow the guided ε̃ = (1 + w) ε_y − w ε_∅, re-integrated here in numpy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddpmkit.diffusion import GaussianDiffusion
from ddpmkit.samplers import sample
from ddpmkit.sampling.denoiser import Denoiser, ModelDenoiser, Prediction, guide
from ddpmkit.schedules import make_schedule
from gaussian_oracle import linear_alpha_bar

pytestmark = pytest.mark.usefixtures("one_thread")

MEANS, STD, PRIOR = np.array([-0.5, 0.5]), 0.2, np.array([0.5, 0.5])


def posterior_x0(x_t: np.ndarray, alpha_bar: np.ndarray, label: int | None) -> np.ndarray:
    """The exact E[x_0 | x_t (, y)] of the mixture, in numpy."""
    a = alpha_bar
    gain = np.sqrt(a) * STD**2 / (a * STD**2 + 1 - a)
    per_class = [m + gain * (x_t - np.sqrt(a) * m) for m in MEANS]
    if label is not None:
        return per_class[label]
    var = a * STD**2 + 1 - a
    logp = np.stack(
        [
            np.log(p) - (x_t - np.sqrt(a) * m) ** 2 / (2 * var)
            for p, m in zip(PRIOR, MEANS, strict=True)
        ]
    )
    weights = np.exp(logp - logp.max(0))
    weights /= weights.sum(0)
    return sum(w * e for w, e in zip(weights, per_class, strict=True))


class MixtureDenoiser(Denoiser):
    """The exact denoiser of the mixture for class ``label`` (None: unconditional)."""

    def __init__(self, diffusion: GaussianDiffusion, alpha_bar: np.ndarray, label: int | None):
        self.diffusion, self.alpha_bar, self.label = diffusion, alpha_bar, label

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> Prediction:
        a = self.alpha_bar[t.numpy()].reshape(-1, *([1] * (x_t.ndim - 1)))
        x = x_t.double().numpy()
        x0 = posterior_x0(x, a, self.label)
        eps = (x - np.sqrt(a) * x0) / np.sqrt(1 - a)
        return Prediction(torch.from_numpy(eps), torch.from_numpy(x0))


def setup(num_steps: int):
    alpha_bar = linear_alpha_bar(num_steps)
    diffusion = GaussianDiffusion(make_schedule("linear", num_steps), "eps", "fixed_small")
    return diffusion, alpha_bar


class GuidedPair(Denoiser):
    """Guidance of two exact denoisers (the conditional and the unconditional mixture)."""

    def __init__(self, conditional: Denoiser, unconditional: Denoiser, weight: float) -> None:
        self.conditional, self.unconditional, self.weight = conditional, unconditional, weight
        self.diffusion = conditional.diffusion

    def __call__(self, x_t, t):
        return guide(self.conditional(x_t, t), self.unconditional(x_t, t), self.weight)


def guided(diffusion, alpha_bar, label, weight):
    return GuidedPair(
        MixtureDenoiser(diffusion, alpha_bar, label),
        MixtureDenoiser(diffusion, alpha_bar, None),
        weight,
    )


def test_guide_is_the_stated_formula_in_both_conventions():
    gen = torch.Generator().manual_seed(0)
    c = Prediction(torch.randn(5, generator=gen), torch.randn(5, generator=gen))
    u = Prediction(torch.randn(5, generator=gen), torch.randn(5, generator=gen))
    g = guide(c, u, 3.0)
    assert torch.allclose(g.eps, 4.0 * c.eps - 3.0 * u.eps)
    scale = 1 + 3.0  # diffusers' guidance_scale
    assert torch.allclose(g.eps, u.eps + scale * (c.eps - u.eps))
    assert guide(c, u, 0.0).eps.equal(c.eps)


@pytest.mark.parametrize("label", [0, 1])
@pytest.mark.slow
def test_weight_zero_samples_the_class_conditional_distribution(label):
    diffusion, alpha_bar = setup(1000)
    n = 20_000
    out = sample(
        guided(diffusion, alpha_bar, label, 0.0),
        diffusion,
        (n, 1, 1, 1),
        sampler="ddpm",
        clip_x0=False,
        generator=torch.Generator().manual_seed(1),
        dtype=torch.float64,
    ).flatten()
    mean, std = out.mean().item(), out.std().item()
    assert abs(mean - MEANS[label]) < 4 * STD / np.sqrt(n) + 2e-3
    assert std == pytest.approx(STD, rel=0.03)  # ancestral at T = 1000: 0.977·s (measured)


@pytest.mark.parametrize("weight", [0.0, 1.0, 4.0])
def test_ddim_follows_the_guided_epsilon(weight):
    """DDIM (η = 0, 25 steps) re-integrated in numpy with ε̃ from the closed forms."""
    diffusion, alpha_bar = setup(200)
    x_T = torch.randn(
        4000, 1, 1, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64
    )
    out = sample(
        guided(diffusion, alpha_bar, 1, weight),
        diffusion,
        x_T.shape,
        sampler="ddim",
        steps=25,
        clip_x0=False,
        x_T=x_T,
        dtype=torch.float64,
    )
    steps = np.round(np.linspace(0, 199, 25)).astype(int)[::-1]
    x = x_T.numpy().copy()
    for k, t in enumerate(steps):
        a, a_prev = alpha_bar[t], (alpha_bar[steps[k + 1]] if k + 1 < len(steps) else 1.0)
        x0_c, x0_u = posterior_x0(x, a, 1), posterior_x0(x, a, None)
        eps_c, eps_u = ((x - np.sqrt(a) * x0) / np.sqrt(1 - a) for x0 in (x0_c, x0_u))
        eps = (1 + weight) * eps_c - weight * eps_u
        x0 = (x - np.sqrt(1 - a) * eps) / np.sqrt(a)
        x = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev) * eps
    assert np.allclose(out.numpy(), x, atol=1e-9)


def test_more_guidance_moves_samples_away_from_the_other_class():
    """p(y=1 | x_t) grows with x_t: the guided score adds w ∇ log p(y=1 | x_t) > 0, so the class-1
    samples move up (away from m_0) and concentrate as w grows."""
    diffusion, alpha_bar = setup(200)
    x_T = torch.randn(
        4000, 1, 1, 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64
    )
    stats = []
    for weight in (0.0, 1.0, 3.0):
        out = sample(
            guided(diffusion, alpha_bar, 1, weight),
            diffusion,
            x_T.shape,
            sampler="ddim",
            steps=50,
            clip_x0=False,
            x_T=x_T,
            dtype=torch.float64,
        )
        stats.append((out.mean().item(), (out < 0).double().mean().item()))
    means, below = zip(*stats, strict=True)
    assert means[0] < means[1] < means[2]
    assert below[0] >= below[1] >= below[2]


def test_one_batched_call_equals_two_separate_calls():
    diffusion, _ = setup(50)
    calls = []

    def model(x, t, y):
        calls.append(len(x))
        return torch.tanh(0.8 * x + 0.1 * y.view(-1, 1, 1, 1) + 0.01 * t.view(-1, 1, 1, 1))

    labels, null = torch.tensor([0, 2, 1]), 3
    x, t = torch.randn(3, 1, 2, 2, dtype=torch.float64), torch.tensor([7, 7, 7])
    two = guide(
        ModelDenoiser(model, diffusion, labels)(x, t),
        ModelDenoiser(model, diffusion, torch.full_like(labels, null))(x, t),
        2.5,
    )
    assert calls == [3, 3]
    one = ModelDenoiser(model, diffusion, labels, null, 2.5)(x, t)
    assert calls == [3, 3, 6]
    assert torch.allclose(one.eps, two.eps, atol=1e-12) and torch.allclose(one.x0, two.x0)
    ModelDenoiser(model, diffusion, labels, null, 0.0)(x, t)
    assert calls[-1] == 3  # w = 0: the conditional call only


def test_a_doubled_batch_too_large_is_split_into_two_calls_with_the_same_result():
    diffusion, _ = setup(50)
    calls = []

    def model(x, t, y):
        calls.append(len(x))
        return torch.tanh(0.8 * x + 0.1 * y.view(-1, 1, 1, 1))

    labels = torch.tensor([0, 2, 1])
    x, t = torch.randn(3, 1, 2, 2, dtype=torch.float64), torch.tensor([7, 7, 7])
    one = ModelDenoiser(model, diffusion, labels, 3, 1.5, max_batch=6)(x, t)
    two = ModelDenoiser(model, diffusion, labels, 3, 1.5, max_batch=5)(x, t)
    assert calls == [6, 3, 3]
    assert torch.allclose(one.eps, two.eps, atol=1e-12)
