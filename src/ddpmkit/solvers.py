"""Probability-flow ODE solvers for a trained discrete-time DDPM: DPM-Solver++(2M) and Heun.

Both integrate the deterministic ODE whose marginals match the diffusion's (Song et al. 2021),
calling the model only at the integer timesteps it was trained on. Writing α_t = √ᾱ_t,
σ_t = √(1 − ᾱ_t) and λ_t = log(α_t/σ_t) (half the log-SNR):

- DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2) steps in λ with the model's x_0 prediction:
  x_{t_i} = (σ_{t_i}/σ_{t_{i−1}}) x_{t_{i−1}} − α_{t_i}(e^{−h_i} − 1) D_i with
  h_i = λ_{t_i} − λ_{t_{i−1}}, r_i = h_{i−1}/h_i and
  D_i = (1 + 1/(2r_i)) x̂_0(t_{i−1}) − 1/(2r_i) x̂_0(t_{i−2}); the first step is first order
  (D_1 = x̂_0(t_0)). Its timesteps are uniform in λ (the authors' choice for low-resolution
  images), and the last step lands on σ = 0, where the update is x̂_0 itself.
- Heun (Karras et al. 2022, Algorithm 1 with S_churn = 0) works on x̃ = x/α, for which the ODE is
  dx̃/dσ̃ = (x̃ − D(x̃; σ̃))/σ̃ with σ̃ = σ/α and D the x_0 prediction; σ̃ follows Karras's
  ρ = 7 schedule, and the last step (to σ̃ = 0) is an Euler step.

Continuous grids (uniform λ, Karras σ̃) are snapped to the nearest trained timesteps and topped up
to exactly the asked number of distinct timesteps, so the number of network calls is exact:
K for DPM-Solver++, 2K − 1 for Heun.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ddpmkit.diffusion import GaussianDiffusion
from ddpmkit.errors import ConfigError

KARRAS_RHO = 7.0

StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]  # (index, t, x, pred_x0)
X0Function = Callable[[torch.Tensor, int], torch.Tensor]  # (x_t, t) -> x̂_0, from a Denoiser


def _snap(coordinate: np.ndarray, count: int) -> list[int]:
    """``count`` distinct indices whose coordinates lie nearest a uniform grid over
    [coordinate[0], coordinate[-1]] (``coordinate`` increasing in the index). Collisions, where two
    grid points snap to one index, are filled by splitting the widest remaining gap."""
    size = len(coordinate)
    if count < 1 or count > size:
        raise ConfigError(f"steps must be between 1 and the model's {size} steps, got {count}")
    if count == 1:
        return [size - 1]
    targets = np.linspace(coordinate[0], coordinate[-1], count)
    right = np.clip(np.searchsorted(coordinate, targets), 1, size - 1)
    left = right - 1
    nearer_left = np.abs(targets - coordinate[left]) <= np.abs(coordinate[right] - targets)
    chosen = sorted(set(np.where(nearer_left, left, right).tolist()) | {0, size - 1})
    while len(chosen) < count:
        gaps = [
            (coordinate[b] - coordinate[a], k)
            for k, (a, b) in enumerate(zip(chosen[:-1], chosen[1:], strict=True))
            if b - a > 1
        ]
        _, k = max(gaps)
        a, b = chosen[k], chosen[k + 1]
        middle = 0.5 * (coordinate[a] + coordinate[b])
        inner = np.arange(a + 1, b)
        chosen.insert(k + 1, int(inner[np.argmin(np.abs(coordinate[inner] - middle))]))
    return chosen


def log_snr_timesteps(alphas_cumprod: np.ndarray, count: int) -> list[int]:
    """``count`` trained timesteps (ascending) spread uniformly in λ = ½ log(ᾱ/(1 − ᾱ))."""
    alphas_cumprod = np.asarray(alphas_cumprod, dtype=np.float64)
    half_log_snr = 0.5 * (np.log(alphas_cumprod) - np.log1p(-alphas_cumprod))
    return _snap(-half_log_snr, count)


def karras_timesteps(alphas_cumprod: np.ndarray, count: int, rho: float = KARRAS_RHO) -> list[int]:
    """``count`` trained timesteps (ascending) whose σ̃ = √((1 − ᾱ)/ᾱ) follow Karras et al.'s
    schedule σ̃_i = (σ̃_max^{1/ρ} + i/(K−1) (σ̃_min^{1/ρ} − σ̃_max^{1/ρ}))^ρ (eq. 5)."""
    alphas_cumprod = np.asarray(alphas_cumprod, dtype=np.float64)
    sigma = np.sqrt((1.0 - alphas_cumprod) / alphas_cumprod)
    return _snap(sigma ** (1.0 / rho), count)


def _alpha_sigma(diffusion: GaussianDiffusion, t: int) -> tuple[float, float]:
    alpha_bar = float(diffusion.schedule.alphas_cumprod[t])
    return float(np.sqrt(alpha_bar)), float(np.sqrt(1.0 - alpha_bar))


def dpm_solver_pp_2m(
    diffusion: GaussianDiffusion,
    denoise_x0: X0Function,
    x: torch.Tensor,
    steps: int,
    callback: StepCallback | None = None,
    progress: Callable[[range], range] | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) from x_T (at the last trained timestep) to x_0 in ``steps`` network calls;
    see the module docstring for the update."""
    timesteps = log_snr_timesteps(diffusion.schedule.alphas_cumprod, steps)[::-1]
    previous: tuple[float, torch.Tensor] | None = None  # (λ, x̂_0) of the step before
    order = range(len(timesteps))
    for i in progress(order) if progress else order:
        t = timesteps[i]
        alpha, sigma = _alpha_sigma(diffusion, t)
        lam = float(np.log(alpha) - np.log(sigma))
        x0 = denoise_x0(x, t)
        if i == len(timesteps) - 1:
            x = x0  # σ = 0: the first-order update to λ = ∞ is the x_0 prediction
        else:
            alpha_next, sigma_next = _alpha_sigma(diffusion, timesteps[i + 1])
            h = float(np.log(alpha_next) - np.log(sigma_next)) - lam
            if previous is None:
                direction = x0
            else:
                r = (lam - previous[0]) / h
                direction = (1.0 + 0.5 / r) * x0 - (0.5 / r) * previous[1]
            x = (sigma_next / sigma) * x - alpha_next * float(np.expm1(-h)) * direction
            previous = (lam, x0)
        if callback is not None:
            callback(i, t, x, x0)
    return x


def heun(
    diffusion: GaussianDiffusion,
    denoise_x0: X0Function,
    x: torch.Tensor,
    steps: int,
    callback: StepCallback | None = None,
    progress: Callable[[range], range] | None = None,
) -> torch.Tensor:
    """Heun's 2nd-order method on the probability-flow ODE (Karras et al. 2022, Algorithm 1,
    deterministic) from x_T to x_0 in ``steps`` steps and 2·steps − 1 network calls."""
    timesteps = karras_timesteps(diffusion.schedule.alphas_cumprod, steps)[::-1]
    scales = [_alpha_sigma(diffusion, t) for t in timesteps]
    sigmas = [s / a for a, s in scales] + [0.0]

    def slope(x_scaled: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """dx̃/dσ̃ = (x̃ − D(x̃; σ̃_k))/σ̃_k and D itself."""
        x0 = denoise_x0(scales[k][0] * x_scaled, timesteps[k])
        return (x_scaled - x0) / sigmas[k], x0

    x_scaled = x / scales[0][0]
    order = range(len(timesteps))
    for k in progress(order) if progress else order:
        d, x0 = slope(x_scaled, k)
        dt = sigmas[k + 1] - sigmas[k]
        x_next = x_scaled + dt * d
        if sigmas[k + 1] > 0:
            d_next, _ = slope(x_next, k + 1)
            x_next = x_scaled + dt * 0.5 * (d + d_next)
        x_scaled = x_next
        if callback is not None:
            alpha_next = scales[k + 1][0] if k + 1 < len(timesteps) else 1.0
            callback(k, timesteps[k], alpha_next * x_scaled, x0)
    return x_scaled
