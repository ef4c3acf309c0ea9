"""How x_0 is noised and what the network learns (:class:`DiffusionConfig`), and the names it
is checked against; no torch: the process itself is :class:`ddpmkit.diffusion.GaussianDiffusion`."""

from __future__ import annotations

from dataclasses import dataclass

from ddpmkit.errors import ConfigError

SCHEDULE_NAMES = ("linear", "cosine", "quadratic", "sigmoid")
PREDICTIONS = ("eps", "x0", "v")
VARIANCES = ("fixed_small", "fixed_large", "learned", "learned_range")
LOSSES = ("l2", "l1", "huber", "hybrid", "kl")
LEARNED_VARIANCES = ("learned", "learned_range")
LOSS_WEIGHTS = ("none", "min_snr", "p2")


def _check_choice(kind: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {kind} '{value}': choose one of {', '.join(choices)}")


@dataclass
class DiffusionConfig:
    """How x_0 is noised and what the network learns."""

    schedule: str = "linear"
    num_steps: int = 1000
    prediction: str = "eps"
    variance: str = "fixed_small"
    loss: str = "l2"
    vb_weight: float = 0.001  # λ of L_hybrid = L_simple + λ·L_vlb (Nichol & Dhariwal 2021, §3.1)
    loss_weight: str = "none"  # weighting of the simple loss over t (ddpmkit.loss_weights)
    min_snr_gamma: float = 5.0  # γ of min-SNR-γ (Hang et al. 2023)
    p2_gamma: float = 1.0  # γ of P2 (Choi et al. 2022)
    p2_k: float = 1.0  # k of P2
    schedule_shift: float = 1.0  # s: SNR_t → s²·SNR_t (Hoogeboom et al. 2023, §3.1)

    @property
    def learned_variance(self) -> bool:
        """Whether the network must output 2× channels (ε and the variance values)."""
        return self.variance in LEARNED_VARIANCES

    def validate(self) -> None:
        _check_choice("schedule", self.schedule, SCHEDULE_NAMES)
        _check_choice("prediction", self.prediction, PREDICTIONS)
        _check_choice("variance", self.variance, VARIANCES)
        _check_choice("loss", self.loss, LOSSES)
        if self.num_steps < 1:
            raise ConfigError(f"diffusion.num_steps must be >= 1, got {self.num_steps}")
        if self.vb_weight < 0:
            raise ConfigError(f"diffusion.vb_weight must be >= 0, got {self.vb_weight}")
        _check_choice("loss weighting", self.loss_weight, LOSS_WEIGHTS)
        for key in ("min_snr_gamma", "p2_k", "schedule_shift"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"diffusion.{key} must be > 0, got {getattr(self, key)}")
        if not self.p2_gamma >= 0:
            raise ConfigError(f"diffusion.p2_gamma must be >= 0, got {self.p2_gamma}")
        if self.loss_weight != "none" and self.loss == "kl":
            raise ConfigError(
                "diffusion.loss_weight weights the simple loss; loss=kl has none: use "
                "loss=l2 (or hybrid)"
            )
        if self.loss == "hybrid" and not self.learned_variance:
            raise ConfigError(
                "diffusion.loss=hybrid trains the variance: use variance=learned_range (or learned)"
            )
