"""Heun's 2nd-order method on the probability-flow ODE (Karras et al. 2022, Algorithm 2; with
S_churn = 0 their deterministic Algorithm 1).

It works on x̃ = x/α, for which the ODE is dx̃/dσ̃ = (x̃ − D(x̃; σ̃))/σ̃ with σ̃ = σ/α and D the
x_0 prediction. Its default grid follows Karras's ρ = 7 schedule of σ̃ (:meth:`TimeGrid.karras`);
the last step (to σ̃ = 0) is an Euler step, so K grid points cost 2K − 1 network calls.

``churn`` (S_churn > 0) adds noise before each step whose σ̃ lies in [S_tmin, S_tmax]: σ̂ =
σ̃(1 + γ), γ = min(S_churn/K, √2 − 1), x̂ = x̃ + √(σ̂² − σ̃²) S_noise ε, and the step starts from σ̂.
A denoiser answers at trained timesteps only, so σ̂ is the table's first σ̃ at or above
σ̃(1 + γ) (the noise added matches it exactly). S_tmin, S_tmax, S_noise are the paper's
ImageNet values (Table 5): 0.05, 50, 1.003.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ddpmkit.diffusion import normal_like
from ddpmkit.sampling.denoiser import Denoiser, timesteps_like
from ddpmkit.sampling.grid import TimeGrid
from ddpmkit.sampling.step import Callback, SamplerStep
from ddpmkit.seeding import NoiseGenerator

CHURN_RANGE = (0.05, 50.0)  # S_tmin, S_tmax
CHURN_NOISE = 1.003  # S_noise


def heun(
    denoiser: Denoiser,
    x: torch.Tensor,
    grid: TimeGrid,
    *,
    noise: NoiseGenerator | None = None,
    callback: Callback | None = None,
    churn: float = 0.0,
) -> torch.Tensor:
    """Heun's method from x at the grid's last timestep to x_0 (deterministic unless
    ``churn`` > 0, whose noise comes from ``noise``)."""
    order = list(reversed(range(len(grid))))
    timesteps = [grid.timesteps[k] for k in order]
    scales = [grid.alpha_sigma(k) for k in order]
    sigmas = [s / a for a, s in scales] + [0.0]
    table = grid.base.alphas_cumprod.numpy()
    table_sigmas = np.sqrt((1.0 - table) / table)  # σ̃ of every trained step, ascending in t

    def slope(x_scaled: torch.Tensor, t: int, alpha: float, sigma: float):
        """dx̃/dσ̃ = (x̃ − D(x̃; σ̃))/σ̃ at trained step t and D itself."""
        x_t = alpha * x_scaled
        x0 = denoiser(x_t, timesteps_like(t, x_t)).x0
        return (x_scaled - x0) / sigma, x0

    x_scaled = x / scales[0][0]
    for j in range(len(timesteps)):
        t, alpha, sigma = timesteps[j], scales[j][0], sigmas[j]
        if churn > 0 and CHURN_RANGE[0] <= sigma <= CHURN_RANGE[1]:
            gamma = min(churn / len(timesteps), math.sqrt(2) - 1)
            t_hat = int(np.searchsorted(table_sigmas, sigma * (1 + gamma)))
            t_hat = min(max(t_hat, t), len(table) - 1)
            if t_hat > t:
                t, sigma = t_hat, float(table_sigmas[t_hat])
                alpha = math.sqrt(float(table[t_hat]))
                lift = math.sqrt(sigma**2 - sigmas[j] ** 2) * CHURN_NOISE
                x_scaled = x_scaled + lift * normal_like(x_scaled.shape, noise, x_scaled)
        d, x0 = slope(x_scaled, t, alpha, sigma)
        dt = sigmas[j + 1] - sigma
        x_next = x_scaled + dt * d
        if sigmas[j + 1] > 0:
            d_next, _ = slope(x_next, timesteps[j + 1], scales[j + 1][0], sigmas[j + 1])
            x_next = x_scaled + dt * 0.5 * (d + d_next)
        x_scaled = x_next
        if callback is not None:
            alpha_next = scales[j + 1][0] if j + 1 < len(timesteps) else 1.0
            callback(SamplerStep(j, len(timesteps), timesteps[j], alpha_next * x_scaled, x0))
    return x_scaled
