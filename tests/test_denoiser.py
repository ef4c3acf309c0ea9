"""The Denoiser interface under every sampler: a network and the same network wrapped as a
Denoiser give identical samples, and one wrapper reaches all four samplers."""

from __future__ import annotations

import pytest
import torch

from ddpmkit.denoiser import Denoiser, ModelDenoiser, Prediction
from ddpmkit.diffusion import GaussianDiffusion
from ddpmkit.samplers import SAMPLERS, sample
from ddpmkit.schedules import make_schedule

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Some fixed smooth function of (x_t, t) standing in for a network."""
    return torch.tanh(0.7 * x + 0.01 * t.view(-1, 1, 1, 1).to(x.dtype)) * 0.9


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_a_network_is_read_as_the_exact_posterior_mean_whatever_it_predicts(prediction):
    """For x_0 ~ N(μ, s²) the MSE-optimal network outputs E[ε|x_t], E[x_0|x_t] or E[v|x_t]; read
    through ModelDenoiser each must give x̂_0 = μ + √ᾱ s²/(ᾱ s² + 1 − ᾱ) (x_t − √ᾱ μ), written
    here from ᾱ alone in float64 (an independent closed form), and ε̂ tied to it by eq. 4."""
    from gaussian_oracle import GaussianOracle

    diffusion = GaussianDiffusion(make_schedule("cosine", 100), prediction)
    mu, s = 0.3, 0.7
    network = GaussianOracle.for_schedule("cosine", 100, mu, s, prediction)
    t = torch.tensor([0, 10, 50, 99])
    x_t = torch.linspace(-2, 2, 4, dtype=torch.float64).reshape(4, 1)
    pred = ModelDenoiser(network, diffusion)(x_t, t)
    a = diffusion.schedule.alphas_cumprod[t].reshape(4, 1)
    expected = mu + a.sqrt() * s**2 / (a * s**2 + 1 - a) * (x_t - a.sqrt() * mu)
    torch.testing.assert_close(pred.x0, expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(a.sqrt() * pred.x0 + (1 - a).sqrt() * pred.eps, x_t)


class ConstantDenoiser(Denoiser):
    """Predicts x̂_0 = c everywhere (ε̂ consistent with it): the exact denoiser of data that is
    always c. Every sampler's last step maps x_1 to x̂_0, so each must return c exactly —
    ancestral: the posterior mean at t = 1 has coefficients (1, 0); DDIM: √ᾱ_0' = 1, √(1−1) = 0;
    DPM-Solver++: its last update is x̂_0; Heun: the final Euler step to σ̃ = 0 lands on x̂_0."""

    def __init__(self, diffusion: GaussianDiffusion, c: float) -> None:
        self.diffusion, self.c, self.calls = diffusion, c, 0

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> Prediction:
        self.calls += 1
        x0 = torch.full_like(x_t, self.c)
        return Prediction(self.diffusion.eps_from_x0(x_t, t, x0), x0)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_one_denoiser_wrapper_reaches_every_sampler(sampler):
    diffusion = GaussianDiffusion(make_schedule("cosine", 50), "eps", "fixed_small")
    denoiser = ConstantDenoiser(diffusion, 0.37)
    out = sample(
        denoiser,
        diffusion,
        (4, 2, 3, 5),
        sampler=sampler,
        steps=6,
        clip_x0=False,
        generator=torch.Generator().manual_seed(0),
        dtype=torch.float64,
    )
    assert torch.allclose(out, torch.full_like(out, 0.37), atol=1e-9)
    assert denoiser.calls == (11 if sampler == "heun" else 6)  # 2K − 1 for Heun
