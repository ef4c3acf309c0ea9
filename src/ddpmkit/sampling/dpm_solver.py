"""DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2) on the probability-flow ODE.

With α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t) and λ_t = log(α_t/σ_t), each step is
x_{t_i} = (σ_{t_i}/σ_{t_{i−1}}) x_{t_{i−1}} − α_{t_i}(e^{−h_i} − 1) D_i with
h_i = λ_{t_i} − λ_{t_{i−1}}, r_i = h_{i−1}/h_i and
D_i = (1 + 1/(2r_i)) x̂_0(t_{i−1}) − 1/(2r_i) x̂_0(t_{i−2}); the first step is first order
(D_1 = x̂_0(t_0)) and the last lands on σ = 0, where the update is x̂_0 itself.
Its default grid is uniform in λ (:meth:`TimeGrid.log_snr`), the authors' choice for
low-resolution images. K grid points cost K network calls.
"""

from __future__ import annotations

import numpy as np
import torch

from ddpmkit.sampling.denoiser import Denoiser, timesteps_like
from ddpmkit.sampling.grid import TimeGrid
from ddpmkit.sampling.step import Callback, SamplerStep
from ddpmkit.seeding import NoiseGenerator


def dpm_solver_pp_2m(
    denoiser: Denoiser,
    x: torch.Tensor,
    grid: TimeGrid,
    *,
    noise: NoiseGenerator | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) from x at the grid's last timestep to x_0 (deterministic: ``noise`` is
    not drawn from)."""
    order = list(reversed(range(len(grid))))
    previous: tuple[float, torch.Tensor] | None = None  # (λ, x̂_0) of the step before
    for i, k in enumerate(order):
        t = grid.timesteps[k]
        alpha, sigma = grid.alpha_sigma(k)
        lam = float(np.log(alpha) - np.log(sigma))
        x0 = denoiser(x, timesteps_like(t, x)).x0
        if i == len(order) - 1:
            x = x0  # σ = 0: the first-order update to λ = ∞ is the x_0 prediction
        else:
            alpha_next, sigma_next = grid.alpha_sigma(order[i + 1])
            h = float(np.log(alpha_next) - np.log(sigma_next)) - lam
            if previous is None:
                direction = x0
            else:
                r = (lam - previous[0]) / h
                direction = (1.0 + 0.5 / r) * x0 - (0.5 / r) * previous[1]
            x = (sigma_next / sigma) * x - alpha_next * float(np.expm1(-h)) * direction
            previous = (lam, x0)
        if callback is not None:
            callback(SamplerStep(i, len(order), t, x, x0))
    return x
