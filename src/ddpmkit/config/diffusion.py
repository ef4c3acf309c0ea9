"""How x_0 is noised and what the network learns (:class:`DiffusionConfig`), and the names it
is checked against; no torch: the process itself is :class:`ddpmkit.diffusion.GaussianDiffusion`."""

from __future__ import annotations

from dataclasses import dataclass

from ddpmkit.config.messages import check_choice
from ddpmkit.errors import ConfigError

SCHEDULE_NAMES = ("linear", "cosine", "quadratic", "sigmoid")
PREDICTIONS = ("eps", "x0", "v")
VARIANCES = ("fixed_small", "fixed_large", "learned", "learned_range")
LOSSES = ("l2", "l1", "huber", "hybrid", "kl")
LEARNED_VARIANCES = ("learned", "learned_range")
LOSS_WEIGHTS = ("none", "min_snr", "p2")
PROCESSES = ("ddpm", "edm")


EDM_OWNED = {
    "schedule": "linear",
    "prediction": "eps",
    "loss": "l2",
    "loss_weight": "none",
    "schedule_shift": 1.0,
}
"""The keys ``process=edm`` decides itself, at the values that say "not used"."""


def values_implied_by(given: dict) -> dict:
    """The values that the keys in ``given`` (a [diffusion] table as written) imply for keys it
    leaves out: under ``process=edm`` the keys EDM decides itself step aside (a recipe's
    cosine schedule or P2 weighting would otherwise be refused), and ``loss=kl``, which has no
    simple loss to weight, takes no weighting. Keys that are given are never changed."""
    implied: dict = {}
    if given.get("process") == "edm":
        implied.update(EDM_OWNED)
    if given.get("loss") == "kl":
        implied["loss_weight"] = "none"
    return {key: value for key, value in implied.items() if key not in given}


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
    process: str = "ddpm"  # or "edm": Karras et al. (2022)'s σ-parameterisation (ddpmkit.edm)
    sigma_data: float = 0.5  # EDM: the data's standard deviation in the preconditioning
    sigma_min: float = 0.002  # EDM: the σ range of the process's table
    sigma_max: float = 80.0
    edm_p_mean: float = -1.2  # EDM: ln σ ~ N(P_mean, P_std²) during training
    edm_p_std: float = 1.2

    @property
    def learned_variance(self) -> bool:
        """Whether the network must output 2× channels (ε and the variance values)."""
        return self.variance in LEARNED_VARIANCES

    def validate(self) -> None:
        check_choice("diffusion.schedule", self.schedule, SCHEDULE_NAMES)
        check_choice("diffusion.prediction", self.prediction, PREDICTIONS)
        check_choice("diffusion.variance", self.variance, VARIANCES)
        check_choice("diffusion.loss", self.loss, LOSSES)
        if self.num_steps < 1:
            raise ConfigError(f"diffusion.num_steps must be >= 1, got {self.num_steps}")
        if self.vb_weight < 0:
            raise ConfigError(f"diffusion.vb_weight must be >= 0, got {self.vb_weight}")
        check_choice("diffusion.loss_weight", self.loss_weight, LOSS_WEIGHTS)
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
        check_choice("diffusion.process", self.process, PROCESSES)
        if self.process == "edm":
            self._check_edm()
        if self.loss == "hybrid" and not self.learned_variance:
            raise ConfigError(
                "diffusion.loss=hybrid trains the variance: use variance=learned_range (or learned)"
            )

    def _check_edm(self) -> None:
        """process=edm brings its own σ table, parameterisation, loss weight and σ sampling."""
        for key, default in EDM_OWNED.items():
            if getattr(self, key) != default:
                raise ConfigError(
                    f"diffusion.process=edm has its own σ table, preconditioning and loss "
                    f"weight: drop diffusion.{key} = {getattr(self, key)!r} (from the config "
                    f"file or an override)"
                )
        if self.variance not in ("fixed_small", "fixed_large"):
            raise ConfigError(
                "diffusion.process=edm: the variance must be fixed_small or fixed_large"
            )
        if not 0 < self.sigma_min < self.sigma_max:
            raise ConfigError("diffusion.sigma_min and sigma_max must satisfy 0 < min < max")
        if not (self.sigma_data > 0 and self.edm_p_std > 0):
            raise ConfigError("diffusion.sigma_data and edm_p_std must be > 0")
