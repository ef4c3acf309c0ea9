"""A new sampler is one function and one Sampler value, in this file alone: Euler's method on
the probability-flow ODE, run through `generate` and checked against the exact answer for
Gaussian data (an independent closed form, not the code under test)."""

import torch

from ddpmkit.diffusion import GaussianDiffusion
from ddpmkit.generate import SampleRequest, generate
from ddpmkit.sampling import Sampler, SamplerStep, TimeGrid
from ddpmkit.sampling.denoiser import timesteps_like
from ddpmkit.schedules import make_schedule
from gaussian_oracle import GaussianOracle


def euler(denoiser, x, grid, *, noise=None, callback=None):
    """dx̃/dσ̃ = (x̃ − x̂_0)/σ̃ on x̃ = x/α, σ̃ = σ/α (Karras et al. eq. 3 with s = 1/α)."""
    order = list(reversed(range(len(grid))))
    scales = [grid.alpha_sigma(k) for k in order]
    sigmas = [s / a for a, s in scales] + [0.0]
    x_scaled = x / scales[0][0]
    for j, k in enumerate(order):
        x_t = scales[j][0] * x_scaled
        x0 = denoiser(x_t, timesteps_like(grid.timesteps[k], x_t)).x0
        x_scaled = x_scaled + (sigmas[j + 1] - sigmas[j]) * (x_scaled - x0) / sigmas[j]
        if callback is not None:
            callback(SamplerStep(j, len(order), grid.timesteps[k], x_scaled, x0))
    return x_scaled


def test_a_sampler_defined_here_runs_through_generate_and_samples_the_gaussian() -> None:
    diffusion = GaussianDiffusion(make_schedule("linear", 1000))
    mean, std = 0.3, 0.5
    model = GaussianOracle.for_schedule("linear", 1000, mean, std)
    plugin = Sampler("euler", euler, TimeGrid.karras, default_steps=100)
    request = SampleRequest(n=4000, sampler=plugin, seed=0, batch_size=4000, clip_x0=False)
    with torch.no_grad():
        images = generate(model, diffusion, (1, 1, 1), request, torch.device("cpu"), False).images
    # x_0 ~ N(0.3, 0.5²): the ODE maps N(0, 1) onto it; 4000 draws put the sample mean within
    # 4 standard errors (0.5/√4000 · 4 = 0.032) and the std within 5 %, plus Euler's bias
    assert abs(images.mean().item() - mean) < 0.035
    assert abs(images.std().item() / std - 1) < 0.05
