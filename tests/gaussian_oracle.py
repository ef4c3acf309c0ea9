"""An independent oracle for the tests: the exact denoiser of Gaussian data, in numpy.

Nothing here comes from ddpmkit: ᾱ is computed from the schedules' published formulas, and the
denoiser from Gaussian conditioning. For x_0 ~ N(μ, s²) and x_t = √ᾱ x_0 + √(1−ᾱ) ε (Ho et al.
2020, eq. 4), (x_0, ε, x_t) are jointly Gaussian with

    Var(x_t) = ᾱ s² + 1 − ᾱ,   Cov(x_0, x_t) = √ᾱ s²,   Cov(ε, x_t) = √(1−ᾱ),

so E[x_0 | x_t] = μ + √ᾱ s²/Var(x_t) · (x_t − √ᾱ μ) and E[ε | x_t] = √(1−ᾱ)/Var(x_t) ·
(x_t − √ᾱ μ): both affine in x_t, with the coefficients of :func:`x0_coefficients` and
:func:`eps_coefficients`. v = √ᾱ ε − √(1−ᾱ) x_0 (Salimans & Ho 2022, §4) is affine as well.
"""

from __future__ import annotations

import numpy as np
import torch


def linear_alpha_bar(num_steps: int) -> np.ndarray:
    """ᾱ_t = ∏(1 − β_s), β linear from 1e−4 to 0.02 at T = 1000 (Ho et al., §4), both ends
    scaled by 1000/T."""
    scale = 1000.0 / num_steps
    return np.cumprod(1.0 - np.linspace(1e-4 * scale, 0.02 * scale, num_steps))


def cosine_alpha_bar(num_steps: int, s: float = 0.008) -> np.ndarray:
    """ᾱ_t = f(t/T)/f(0), f(τ) = cos²((τ + s)/(1 + s)·π/2), with β = 1 − ᾱ_t/ᾱ_{t−1} clipped at
    0.999 (Nichol & Dhariwal 2021, eq. 17 and §3.2)."""
    tau = np.arange(num_steps + 1) / num_steps
    f = np.cos((tau + s) / (1 + s) * np.pi / 2) ** 2
    betas = np.minimum(1 - f[1:] / f[:-1], 0.999)
    return np.cumprod(1.0 - betas)


ALPHA_BAR = {"linear": linear_alpha_bar, "cosine": cosine_alpha_bar}


def x0_coefficients(alpha_bar, mean: float, std: float):
    """(a, b) with E[x_0 | x_t] = a + b·x_t, from Gaussian conditioning."""
    var_xt = alpha_bar * std**2 + 1 - alpha_bar
    gain = np.sqrt(alpha_bar) * std**2 / var_xt
    return mean - gain * np.sqrt(alpha_bar) * mean, gain


def eps_coefficients(alpha_bar, mean: float, std: float):
    """(a, b) with E[ε | x_t] = a + b·x_t, from Gaussian conditioning."""
    var_xt = alpha_bar * std**2 + 1 - alpha_bar
    gain = np.sqrt(1 - alpha_bar) / var_xt
    return -gain * np.sqrt(alpha_bar) * mean, gain


class GaussianOracle:
    """``model(x_t, t)`` returning the exact optimal ε, x_0 or v prediction for data N(μ, s²)
    under the schedule with cumulative products ``alpha_bar`` (a numpy array, index t)."""

    def __init__(self, alpha_bar: np.ndarray, mean: float, std: float, prediction: str = "eps"):
        self.alpha_bar = np.asarray(alpha_bar, dtype=np.float64)
        self.mean, self.std, self.prediction = mean, std, prediction

    @classmethod
    def for_schedule(
        cls, name: str, num_steps: int, mean: float, std: float, prediction: str = "eps"
    ) -> GaussianOracle:
        return cls(ALPHA_BAR[name](num_steps), mean, std, prediction)

    def coefficients(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(a, b) with output = a + b·x_t at the timesteps ``t``."""
        ab = self.alpha_bar[t]
        x0_a, x0_b = x0_coefficients(ab, self.mean, self.std)
        eps_a, eps_b = eps_coefficients(ab, self.mean, self.std)
        if self.prediction == "eps":
            return eps_a, eps_b
        if self.prediction == "x0":
            return x0_a, x0_b
        root, root_c = np.sqrt(ab), np.sqrt(1 - ab)
        return root * eps_a - root_c * x0_a, root * eps_b - root_c * x0_b

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, b = self.coefficients(t.detach().cpu().numpy())
        shape = (-1, *([1] * (x_t.ndim - 1)))
        a = torch.as_tensor(a).to(x_t.device, x_t.dtype).reshape(shape)
        b = torch.as_tensor(b).to(x_t.device, x_t.dtype).reshape(shape)
        return a + b * x_t

    def posterior_x0(self, x_t, t):
        """E[x_0 | x_t] (numpy or torch ``x_t``; ``t`` an int or an integer array)."""
        a, b = x0_coefficients(self.alpha_bar[t], self.mean, self.std)
        return a + b * x_t
