"""Heun's 2nd-order method on the probability-flow ODE (Karras et al. 2022, Algorithm 1 with
S_churn = 0).

It works on x̃ = x/α, for which the ODE is dx̃/dσ̃ = (x̃ − D(x̃; σ̃))/σ̃ with σ̃ = σ/α and D the
x_0 prediction. Its default grid follows Karras's ρ = 7 schedule of σ̃ (:meth:`TimeGrid.karras`);
the last step (to σ̃ = 0) is an Euler step, so K grid points cost 2K − 1 network calls.
"""

from __future__ import annotations

import torch

from ddpmkit.sampling.denoiser import Denoiser, timesteps_like
from ddpmkit.sampling.grid import TimeGrid
from ddpmkit.sampling.step import Callback, SamplerStep
from ddpmkit.seeding import NoiseGenerator


def heun(
    denoiser: Denoiser,
    x: torch.Tensor,
    grid: TimeGrid,
    *,
    noise: NoiseGenerator | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Heun's method from x at the grid's last timestep to x_0 (deterministic)."""
    order = list(reversed(range(len(grid))))
    timesteps = [grid.timesteps[k] for k in order]
    scales = [grid.alpha_sigma(k) for k in order]
    sigmas = [s / a for a, s in scales] + [0.0]

    def slope(x_scaled: torch.Tensor, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        """dx̃/dσ̃ = (x̃ − D(x̃; σ̃_j))/σ̃_j and D itself."""
        x_t = scales[j][0] * x_scaled
        x0 = denoiser(x_t, timesteps_like(timesteps[j], x_t)).x0
        return (x_scaled - x0) / sigmas[j], x0

    x_scaled = x / scales[0][0]
    for j in range(len(timesteps)):
        d, x0 = slope(x_scaled, j)
        dt = sigmas[j + 1] - sigmas[j]
        x_next = x_scaled + dt * d
        if sigmas[j + 1] > 0:
            d_next, _ = slope(x_next, j + 1)
            x_next = x_scaled + dt * 0.5 * (d + d_next)
        x_scaled = x_next
        if callback is not None:
            alpha_next = scales[j + 1][0] if j + 1 < len(timesteps) else 1.0
            callback(SamplerStep(j, len(timesteps), timesteps[j], alpha_next * x_scaled, x0))
    return x_scaled
