"""The exact denoiser for Gaussian data, a model with known answers for checking samplers.

For x_0 ~ N(μ, s² I) and x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε, x_t is Gaussian too and
E[x_0 | x_t] = μ + √ᾱ_t s² / (ᾱ_t s² + 1 − ᾱ_t) · (x_t − √ᾱ_t μ),
so the MSE-optimal ε-predictor is ε̂ = (x_t − √ᾱ_t E[x_0 | x_t]) / √(1−ᾱ_t). A sampler driven by it
should return N(μ, s² I) up to its own discretisation error.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ddpmkit.diffusion import GaussianDiffusion


@dataclass
class GaussianDataDenoiser:
    """``model(x_t, t)`` returning the exact optimal prediction (ε, x_0 or v, as the diffusion
    expects) for data N(mean, std² I)."""

    diffusion: GaussianDiffusion
    mean: float
    std: float

    def posterior_x0(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """E[x_0 | x_t]."""
        alpha_bar = self.diffusion.coef("alphas_cumprod", t, x_t)
        var = self.std**2
        gain = torch.sqrt(alpha_bar) * var / (alpha_bar * var + 1.0 - alpha_bar)
        return self.mean + gain * (x_t - torch.sqrt(alpha_bar) * self.mean)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x0 = self.posterior_x0(x_t, t)
        eps = self.diffusion.eps_from_x0(x_t, t, x0)
        return self.diffusion.training_target(x0, eps, t)
