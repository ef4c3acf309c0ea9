"""Ancestral sampling (Ho et al. 2020, Algorithm 2) on a time grid: all T steps, or the
respaced process over K of them (Nichol & Dhariwal 2021, §4)."""

from __future__ import annotations

import torch

from ddpmkit.diffusion import (
    Prediction,
    check_learned_variance_respacing,
    normal_like,
    posterior_mean_variance,
    reverse_log_variance,
)
from ddpmkit.sampling.denoiser import Denoiser, timesteps_like
from ddpmkit.sampling.grid import TimeGrid
from ddpmkit.sampling.step import Callback, SamplerStep
from ddpmkit.seeding import NoiseGenerator


def ancestral_step(
    grid: TimeGrid,
    variance: str,
    pred: Prediction,
    x: torch.Tensor,
    k: int,
    noise: NoiseGenerator | None,
) -> torch.Tensor:
    """x_{t_{k−1}} = μ̃(x_{t_k}, x̂_0) + σ z on the grid's process, no noise at k = 0 (Algorithm 2
    with the posterior mean of eq. 7 and the variance of
    :func:`~ddpmkit.diffusion.reverse_log_variance`)."""
    index = timesteps_like(k, x)
    mean, _, _ = posterior_mean_variance(grid.tables, pred.x0, x, index)
    if k == 0:
        return mean
    log_variance = reverse_log_variance(grid.tables, variance, index, x, pred.variance)
    return mean + torch.exp(0.5 * log_variance) * normal_like(x.shape, noise, x)


def ancestral(
    denoiser: Denoiser,
    x: torch.Tensor,
    grid: TimeGrid,
    *,
    noise: NoiseGenerator | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """From x_{t_{K−1}} to x_0 by ancestral steps over ``grid``."""
    variance = denoiser.diffusion.variance
    check_learned_variance_respacing(variance, len(grid), grid.base.num_steps)
    for counter, k in enumerate(reversed(range(len(grid)))):
        t = grid.timesteps[k]
        pred = denoiser(x, timesteps_like(t, x))
        x = ancestral_step(grid, variance, pred, x, k, noise)
        if callback is not None:
            callback(SamplerStep(counter, len(grid), t, x, pred.x0))
    return x
