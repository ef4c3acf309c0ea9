"""Gaussian diffusion: the forward process q, the reverse model p_θ and the training losses.

The diffusion never imports a network: a model is any callable ``model(x_t, t) -> Tensor`` with
``t`` a LongTensor of shape (B,), returning a tensor shaped like ``x_t`` (twice the channels when
the variance is learned). Equations refer to Ho et al. (2020) unless stated otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ddpmkit.errors import ConfigError
from ddpmkit.schedules import SCHEDULE_NAMES, Schedule, make_schedule

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

PREDICTIONS = ("eps", "x0", "v")
VARIANCES = ("fixed_small", "fixed_large")
LOSSES = ("l2", "l1", "huber")


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

    def validate(self) -> None:
        _check_choice("schedule", self.schedule, SCHEDULE_NAMES)
        _check_choice("prediction", self.prediction, PREDICTIONS)
        _check_choice("variance", self.variance, VARIANCES)
        _check_choice("loss", self.loss, LOSSES)
        if self.num_steps < 1:
            raise ConfigError(f"diffusion.num_steps must be >= 1, got {self.num_steps}")


@dataclass
class ModelPrediction:
    """What one network call says about x_0, given x_t (all shaped like x_t)."""

    eps: torch.Tensor
    x0: torch.Tensor


@dataclass
class ReverseStep:
    """p_θ(x_{t−1} | x_t) = N(mean, variance) together with the predictions it came from."""

    mean: torch.Tensor
    variance: torch.Tensor
    log_variance: torch.Tensor
    x0: torch.Tensor
    eps: torch.Tensor


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar, mean over the batch
    per_example: torch.Tensor  # (B,)
    t: torch.Tensor  # (B,) the timesteps drawn


def spaced_timesteps(num_steps: int, count: int) -> list[int]:
    """``count`` timesteps evenly spread over [0, T−1], always including both ends (T−1 first to
    be sampled, so sampling starts from pure noise whatever the count)."""
    if count < 1 or count > num_steps:
        raise ConfigError(f"steps must be between 1 and the model's {num_steps} steps, got {count}")
    if count == 1:
        return [num_steps - 1]
    positions = torch.linspace(0, num_steps - 1, count, dtype=torch.float64)
    return sorted({int(round(p)) for p in positions.tolist()})


class GaussianDiffusion:
    """The forward process q(x_t | x_0) of a schedule and the reverse step of a model."""

    def __init__(
        self,
        schedule: Schedule,
        prediction: str = "eps",
        variance: str = "fixed_small",
        loss: str = "l2",
    ) -> None:
        _check_choice("prediction", prediction, PREDICTIONS)
        _check_choice("variance", variance, VARIANCES)
        _check_choice("loss", loss, LOSSES)
        self.schedule = schedule
        self.prediction = prediction
        self.variance = variance
        self.loss = loss
        self._tables64 = schedule.as_dict()
        self._fixed_large_log_variance = self._make_fixed_large_log_variance()
        self._cache: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}

    @classmethod
    def from_config(cls, config: DiffusionConfig) -> GaussianDiffusion:
        config.validate()
        schedule = make_schedule(config.schedule, config.num_steps)
        return cls(schedule, config.prediction, config.variance, config.loss)

    @property
    def num_steps(self) -> int:
        return self.schedule.num_steps

    def _make_fixed_large_log_variance(self) -> torch.Tensor:
        """log σ_t² for σ_t² = β_t, with the first entry set to β̃_2 so that the decoder step's
        variance is not larger than the data scale (as in the reference implementation)."""
        betas = self.schedule.betas
        variance = self.schedule.posterior_variance
        if betas.numel() == 1:
            return torch.log(betas)
        return torch.log(torch.cat([variance[1:2], betas[1:]]))

    # ------------------------------------------------------------------ coefficient lookup
    def _table(self, name: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (name, device, dtype)
        table = self._cache.get(key)
        if table is None:
            source = (
                self._fixed_large_log_variance
                if name == "fixed_large_log_variance"
                else self._tables64[name]
            )
            table = source.to(device=device, dtype=dtype)
            self._cache[key] = table
        return table

    def coef(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Entry ``t`` of the named schedule array, shaped to broadcast against ``like``."""
        values = self._table(name, like.device, like.dtype)[t.to(like.device)]
        return values.reshape(-1, *([1] * (like.ndim - 1)))

    def _check_t(self, t: torch.Tensor, batch: int) -> torch.Tensor:
        if not isinstance(t, torch.Tensor):
            t = torch.as_tensor(t)
        if t.ndim == 0:
            t = t.expand(batch)
        if t.dtype not in (torch.int64, torch.int32):
            raise ConfigError("timesteps must be integer tensors of shape (B,)")
        return t.long()

    # ------------------------------------------------------------------ forward process
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε, a draw from q(x_t | x_0) (eq. 4)."""
        t = self._check_t(t, x0.shape[0])
        return (
            self.coef("sqrt_alphas_cumprod", t, x0) * x0
            + self.coef("sqrt_one_minus_alphas_cumprod", t, x0) * noise
        )

    def q_mean_variance(
        self, x0: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and log variance of q(x_t | x_0) (eq. 4)."""
        t = self._check_t(t, x0.shape[0])
        mean = self.coef("sqrt_alphas_cumprod", t, x0) * x0
        variance = 1.0 - self.coef("alphas_cumprod", t, x0)
        return mean, variance.expand_as(x0), torch.log(variance).expand_as(x0)

    def q_posterior(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log variance of q(x_{t−1} | x_t, x_0) (eq. 6–7)."""
        t = self._check_t(t, x_t.shape[0])
        mean = (
            self.coef("posterior_mean_coef1", t, x_t) * x0
            + self.coef("posterior_mean_coef2", t, x_t) * x_t
        )
        variance = self.coef("posterior_variance", t, x_t).expand_as(x_t)
        log_variance = self.coef("posterior_log_variance_clipped", t, x_t).expand_as(x_t)
        return mean, variance, log_variance

    # ------------------------------------------------------------------ ε / x0 / v
    def x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_0 = (x_t − √(1−ᾱ_t) ε)/√ᾱ_t, eq. 4 solved for x_0."""
        return (
            self.coef("sqrt_recip_alphas_cumprod", t, x_t) * x_t
            - self.coef("sqrt_recipm1_alphas_cumprod", t, x_t) * eps
        )

    def eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """ε = (x_t − √ᾱ_t x_0)/√(1−ᾱ_t), eq. 4 solved for ε."""
        return (self.coef("sqrt_recip_alphas_cumprod", t, x_t) * x_t - x0) / self.coef(
            "sqrt_recipm1_alphas_cumprod", t, x_t
        )

    def v_from_x0_eps(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v = √ᾱ_t ε − √(1−ᾱ_t) x_0 (Salimans & Ho 2022, §4)."""
        return (
            self.coef("sqrt_alphas_cumprod", t, x0) * eps
            - self.coef("sqrt_one_minus_alphas_cumprod", t, x0) * x0
        )

    def x0_from_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """x_0 = √ᾱ_t x_t − √(1−ᾱ_t) v."""
        return (
            self.coef("sqrt_alphas_cumprod", t, x_t) * x_t
            - self.coef("sqrt_one_minus_alphas_cumprod", t, x_t) * v
        )

    def eps_from_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """ε = √(1−ᾱ_t) x_t + √ᾱ_t v."""
        return (
            self.coef("sqrt_one_minus_alphas_cumprod", t, x_t) * x_t
            + self.coef("sqrt_alphas_cumprod", t, x_t) * v
        )

    # ------------------------------------------------------------------ reverse process
    def split_output(self, output: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        """The prediction part of a model output (fixed variances: all of it)."""
        if output.shape != x_t.shape:
            raise ConfigError(
                f"the model returned shape {tuple(output.shape)} for input {tuple(x_t.shape)}; "
                f"with variance='{self.variance}' it must return the input's shape"
            )
        return output

    def interpret(
        self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, clip_x0: bool = False
    ) -> ModelPrediction:
        """Turn a raw prediction (ε, x_0 or v) into (ε, x_0). With ``clip_x0`` the x_0 estimate
        is clamped to [−1, 1] and ε recomputed from it, so that both stay consistent."""
        if self.prediction == "eps":
            eps = output
            x0 = self.x0_from_eps(x_t, t, eps)
        elif self.prediction == "x0":
            x0 = output
            eps = self.eps_from_x0(x_t, t, x0)
        else:
            x0 = self.x0_from_v(x_t, t, output)
            eps = self.eps_from_v(x_t, t, output)
        if clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
            eps = self.eps_from_x0(x_t, t, x0)
        return ModelPrediction(eps=eps, x0=x0)

    def predict(
        self, model: Model, x_t: torch.Tensor, t: torch.Tensor, clip_x0: bool = False
    ) -> ModelPrediction:
        """One network call, read as (ε, x_0)."""
        t = self._check_t(t, x_t.shape[0])
        output = self.split_output(model(x_t, t), x_t)
        return self.interpret(output, x_t, t, clip_x0)

    def p_mean_variance(
        self, model: Model, x_t: torch.Tensor, t: torch.Tensor, clip_x0: bool = False
    ) -> ReverseStep:
        """p_θ(x_{t−1} | x_t): mean μ̃_t(x_t, x̂_0) (eq. 7 with x̂_0 from the model, equivalent to
        eq. 11 for ε-prediction) and the fixed variance σ_t² = β̃_t or β_t (§3.2)."""
        t = self._check_t(t, x_t.shape[0])
        pred = self.predict(model, x_t, t, clip_x0)
        mean, _, _ = self.q_posterior(pred.x0, x_t, t)
        if self.variance == "fixed_small":
            log_variance = self.coef("posterior_log_variance_clipped", t, x_t)
        else:
            log_variance = self.coef("fixed_large_log_variance", t, x_t)
        log_variance = log_variance.expand_as(x_t)
        return ReverseStep(mean, torch.exp(log_variance), log_variance, pred.x0, pred.eps)

    # ------------------------------------------------------------------ training
    def sample_timesteps(
        self, batch: int, device: torch.device, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """t ~ Uniform{0, …, T−1}, one per example (Algorithm 1)."""
        gen_device = generator.device if generator is not None else device
        t = torch.randint(0, self.num_steps, (batch,), generator=generator, device=gen_device)
        return t.to(device)

    def training_target(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network is asked to output: ε, x_0 or v."""
        if self.prediction == "eps":
            return eps
        if self.prediction == "x0":
            return x0
        return self.v_from_x0_eps(x0, eps, t)

    def elementwise_loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.loss == "l2":
            return (output - target) ** 2
        if self.loss == "l1":
            return (output - target).abs()
        return F.smooth_l1_loss(output, target, reduction="none", beta=1.0)

    def training_loss(
        self,
        model: Model,
        x0: torch.Tensor,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> LossOutput:
        """L_simple of eq. 14 generalised to the chosen target (ε/x_0/v) and distance (l2/l1/huber):
        draw t and ε, noise x_0 with eq. 4, compare the network's output with the target.
        The per-example value is the mean over pixels; the loss is its batch mean."""
        batch = x0.shape[0]
        if t is None:
            t = self.sample_timesteps(batch, x0.device, generator)
        t = self._check_t(t, batch)
        if noise is None:
            gen_device = generator.device if generator is not None else x0.device
            noise = torch.randn(x0.shape, generator=generator, device=gen_device, dtype=x0.dtype)
            noise = noise.to(x0.device)
        x_t = self.q_sample(x0, t, noise)
        output = self.split_output(model(x_t, t), x_t)
        target = self.training_target(x0, noise, t)
        per_example = self.elementwise_loss(output, target).flatten(1).mean(dim=1)
        return LossOutput(loss=per_example.mean(), per_example=per_example, t=t)

    # ------------------------------------------------------------------ respacing
    def respaced(self, timesteps: list[int]) -> tuple[GaussianDiffusion, torch.Tensor]:
        """A diffusion over the subset ``timesteps`` (increasing) of this one's steps, with
        β'_i = 1 − ᾱ_{s_i}/ᾱ_{s_{i−1}} so that ᾱ' equals ᾱ on the subset (Nichol & Dhariwal
        2021, §4), and the map from its step index i back to the original step s_i, which is what
        the network must be called with."""
        if not timesteps or any(b <= a for a, b in zip(timesteps, timesteps[1:], strict=False)):
            raise ConfigError("respacing needs a non-empty increasing list of timesteps")
        if timesteps[0] < 0 or timesteps[-1] >= self.num_steps:
            raise ConfigError(f"timesteps must lie in [0, {self.num_steps - 1}]")
        index = torch.tensor(timesteps, dtype=torch.long)
        alpha_bar = self.schedule.alphas_cumprod[index]
        prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
        betas = 1.0 - alpha_bar / prev
        schedule = Schedule(name=f"{self.schedule.name}[{len(timesteps)}]", betas=betas)
        spaced = GaussianDiffusion(schedule, self.prediction, self.variance, self.loss)
        return spaced, index


def wrap_respaced(model: Model, timestep_map: torch.Tensor) -> Model:
    """A model of the respaced diffusion: maps its step index back to the original timestep."""

    def respaced_model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model(x_t, timestep_map.to(t.device)[t])

    return respaced_model
