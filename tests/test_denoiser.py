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


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("variance", ["fixed_small", "learned_range"])
def test_a_model_and_its_denoiser_sample_identically(sampler, variance):
    diffusion = GaussianDiffusion(make_schedule("linear", 40), "eps", variance)
    model = tiny_model
    if variance == "learned_range":

        def model(x, t):
            return torch.cat([tiny_model(x, t), torch.sin(x)], dim=1)

    kwargs = dict(sampler=sampler, steps=8, eta=0.3 if sampler == "ddim" else 0.0)
    a = sample(model, diffusion, (3, 1, 4, 4), generator=torch.Generator().manual_seed(5), **kwargs)
    wrapped = ModelDenoiser(model, diffusion)
    b = sample(
        wrapped, diffusion, (3, 1, 4, 4), generator=torch.Generator().manual_seed(5), **kwargs
    )
    assert torch.equal(a, b)


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
