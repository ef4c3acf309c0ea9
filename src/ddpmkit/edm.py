"""EDM (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models")
as a process beside the discrete DDPM, under the same Denoiser interface.

EDM writes x = y + σ n and a denoiser D(x; σ) = c_skip(σ) x + c_out(σ) F(c_in(σ) x; c_noise(σ))
(their eq. 7 and Table 1) with

    c_skip = σ_d²/(σ² + σ_d²),  c_out = σ σ_d/√(σ² + σ_d²),  c_in = 1/√(σ² + σ_d²),
    c_noise = ¼ ln σ,

trained with ln σ ~ N(P_mean, P_std²) and the loss λ(σ)‖D(y + σn; σ) − y‖², λ = 1/c_out².
ddpmkit keeps a table of T values σ_t, geometric from σ_min to σ_max
(:func:`~ddpmkit.schedules.edm_sigmas`), and reads it as the variance-preserving process with
ᾱ_t = 1/(1 + σ_t²): x_t^VP = x/√(1 + σ²) (:func:`~ddpmkit.schedules.edm_schedule`). So an EDM
network is an x₀-predictor D of that discrete process: DDPM, DDIM, DPM-Solver++, Heun (on
Karras's ρ = 7 grid of the table, with optional churn), guidance, inpainting, editing and the
bound (``ddpm nll``) run on it unchanged. During training the log-normal σ is that density over
the table's points (:class:`~ddpmkit.timesteps.LogNormalSigmaSampler`); the table is uniform in
ln σ, so with T = 1000 neighbouring σ differ by 1.1 %.
"""

from __future__ import annotations

import torch

from ddpmkit.config.diffusion import DiffusionConfig
from ddpmkit.diffusion import GaussianDiffusion, Prediction
from ddpmkit.loss_weights import edm_weights
from ddpmkit.schedules import edm_schedule, edm_sigmas
from ddpmkit.timesteps import LogNormalSigmaSampler


def preconditioning(
    sigma: torch.Tensor, sigma_data: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_skip, c_out, c_in, c_noise) of Karras et al. (2022), Table 1, at ``sigma``."""
    total = sigma**2 + sigma_data**2
    return (
        sigma_data**2 / total,
        sigma * sigma_data / total.sqrt(),
        1 / total.sqrt(),
        sigma.log() / 4,
    )


class EDMDiffusion(GaussianDiffusion):
    """The EDM process on its σ table: a :class:`GaussianDiffusion` with x₀ prediction whose
    network is called through the preconditioning."""

    def __init__(self, config: DiffusionConfig) -> None:
        schedule = edm_schedule(config.num_steps, config.sigma_min, config.sigma_max)
        snr = schedule.alphas_cumprod / (1 - schedule.alphas_cumprod)
        super().__init__(
            schedule,
            prediction="x0",
            variance=config.variance,
            loss="l2",
            loss_weights=edm_weights(snr, config.sigma_data),
        )
        self.sigma_data = config.sigma_data
        self.p_mean, self.p_std = config.edm_p_mean, config.edm_p_std
        # σ_t as drawn up (float64), not recovered from the ᾱ that the βs multiply back to
        self.sigmas = edm_sigmas(config.num_steps, config.sigma_min, config.sigma_max)

    def _sigma(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self.sigmas.to(device=like.device)[t].to(like.dtype).view(-1, *[1] * (like.ndim - 1))

    def model_input(self, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(c_in(σ) x, c_noise(σ)) with x = x_t^VP √(1 + σ²) = y + σ n."""
        sigma = self._sigma(t, x_t)
        _, _, c_in, _ = preconditioning(sigma, self.sigma_data)
        x = x_t * (1 + sigma**2).sqrt()
        c_noise = (self.sigmas.to(device=x_t.device)[t].log() / 4).to(x_t.dtype)
        return c_in * x, c_noise

    def denoised(self, raw: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """D(x; σ) = c_skip x + c_out F: the x₀ estimate."""
        sigma = self._sigma(t, x_t)
        c_skip, c_out, _, _ = preconditioning(sigma, self.sigma_data)
        return c_skip * (x_t * (1 + sigma**2).sqrt()) + c_out * raw

    def interpret(self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> Prediction:
        x0 = self.denoised(output, x_t, t)
        return Prediction(eps=self.eps_from_x0(x_t, t, x0), x0=x0)

    def loss_prediction(self, raw: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        return self.denoised(raw, x_t, t)

    def training_sampler(self) -> LogNormalSigmaSampler:
        return LogNormalSigmaSampler(self.sigmas, self.p_mean, self.p_std)
