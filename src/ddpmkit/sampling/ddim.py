"""DDIM (Song et al. 2021) on a time grid, with stochasticity η (0: deterministic)."""

from __future__ import annotations

import torch

from ddpmkit.diffusion import normal_like
from ddpmkit.sampling.denoiser import Denoiser, timesteps_like
from ddpmkit.sampling.grid import TimeGrid
from ddpmkit.sampling.step import Callback, SamplerStep
from ddpmkit.seeding import NoiseGenerator


def ddim(
    denoiser: Denoiser,
    x: torch.Tensor,
    grid: TimeGrid,
    *,
    noise: NoiseGenerator | None = None,
    callback: Callback | None = None,
    eta: float = 0.0,
) -> torch.Tensor:
    """x_{t'} = √ᾱ_{t'} x̂_0 + √(1−ᾱ_{t'}−σ²) ε̂ + σ z (eq. 12) with
    σ = η √((1−ᾱ_{t'})/(1−ᾱ_t)) √(1−ᾱ_t/ᾱ_{t'}) (eq. 16), t' the grid's previous timestep."""
    tables = grid.tables
    for counter, k in enumerate(reversed(range(len(grid)))):
        t = grid.timesteps[k]
        pred = denoiser(x, timesteps_like(t, x))
        index = timesteps_like(k, x)
        alpha_bar = tables.coef("alphas_cumprod", index, x)
        alpha_bar_prev = tables.coef("alphas_cumprod_prev", index, x)
        sigma = (
            eta
            * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar))
            * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
        )
        direction = torch.sqrt((1 - alpha_bar_prev - sigma**2).clamp(min=0.0)) * pred.eps
        x = torch.sqrt(alpha_bar_prev) * pred.x0 + direction
        if eta > 0 and k > 0:
            x = x + sigma * normal_like(x.shape, noise, x)
        if callback is not None:
            callback(SamplerStep(counter, len(grid), t, x, pred.x0))
    return x
