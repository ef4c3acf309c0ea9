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
        if self.loss == "hybrid" and not self.learned_variance:
            raise ConfigError(
                "diffusion.loss=hybrid trains the variance: use variance=learned_range (or learned)"
            )
