"""Weightings of the simple loss over t: one function each, tabulated once per process.

Each weighting is written as the weight w(t) of the x₀ error ‖x₀ − x̂₀‖², a function of the
signal-to-noise ratio SNR_t = ᾱ_t/(1 − ᾱ_t). The network's own target turns it into the weight of
the loss it is trained on, since for one prediction (Salimans & Ho 2022, §4)

    ‖ε − ε̂‖² = SNR · ‖x₀ − x̂₀‖²,   ‖v − v̂‖² = (SNR + 1) · ‖x₀ − x̂₀‖²,

so the weight of the ε loss is w/SNR and that of the v loss w/(SNR + 1).

- ``none``: the simple loss of the chosen target unweighted (Ho et al. 2020, eq. 14): w = SNR for
  ε, SNR + 1 for v, 1 for x₀.
- ``min_snr``: w = min(SNR, γ) (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR
  Weighting Strategy", eq. 10; γ = 5), which caps the weight of the low-noise steps.
- ``p2``: w = SNR/(k + SNR)^γ (Choi et al. 2022, "Perception Prioritized Training", eq. 8: the ε
  loss weighted by 1/(k + SNR)^γ; k = 1, γ = 1), which lowers the weight of the steps that only
  clean up imperceptible details.
"""

from __future__ import annotations

import torch

from ddpmkit.config.diffusion import DiffusionConfig


def target_factor(snr: torch.Tensor, prediction: str) -> torch.Tensor:
    """The factor f with ‖target − target̂‖² = f · ‖x₀ − x̂₀‖² for ``prediction``."""
    if prediction == "eps":
        return snr
    if prediction == "v":
        return snr + 1
    return torch.ones_like(snr)


def min_snr_weights(snr: torch.Tensor, prediction: str, gamma: float) -> torch.Tensor:
    """min(SNR, γ) / f: for ε min(1, γ/SNR), for v min(SNR, γ)/(SNR + 1), for x₀ min(SNR, γ)."""
    if prediction == "eps":  # written without the division, which SNR → 0 would make 0/0
        return torch.clamp(gamma / snr, max=1.0)
    return torch.minimum(snr, torch.full_like(snr, gamma)) / target_factor(snr, prediction)


def p2_weights(snr: torch.Tensor, prediction: str, gamma: float, k: float) -> torch.Tensor:
    """SNR/(k + SNR)^γ / f: for ε 1/(k + SNR)^γ."""
    if prediction == "eps":
        return (k + snr) ** -gamma
    return snr / (k + snr) ** gamma / target_factor(snr, prediction)


def edm_weights(snr: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """EDM's λ(σ) = (σ² + σ_data²)/(σ σ_data)² of the x₀ error (Karras et al. 2022, Table 1), with
    σ² = 1/SNR: (1 + σ_data² SNR)/σ_data². With the preconditioning it gives the network's own
    output an effective weight of 1 at every σ (their eq. 8)."""
    return (1 + sigma_data**2 * snr) / sigma_data**2


WEIGHTINGS = {
    "min_snr": lambda snr, prediction, cfg: min_snr_weights(snr, prediction, cfg.min_snr_gamma),
    "p2": lambda snr, prediction, cfg: p2_weights(snr, prediction, cfg.p2_gamma, cfg.p2_k),
}
"""Name → weights(SNR, prediction, diffusion config); ``none`` is absent: no weights."""


def loss_weights(
    alphas_cumprod: torch.Tensor, prediction: str, config: DiffusionConfig
) -> torch.Tensor | None:
    """The weight of each t's simple loss (float64, shape (T,)) for ``config.loss_weight``;
    None for ``none`` (the unweighted loss, untouched)."""
    if config.loss_weight == "none":
        return None
    snr = alphas_cumprod / (1 - alphas_cumprod)
    return WEIGHTINGS[config.loss_weight](snr, prediction, config)
