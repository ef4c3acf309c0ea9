"""Gaussian diffusion: the forward process q, the reverse model p_θ and the training losses.

The diffusion never imports a network: a model is any callable ``model(x_t, t) -> Tensor`` with
``t`` a LongTensor of shape (B,), returning a tensor shaped like ``x_t`` (twice the channels when
the variance is learned). Equations refer to Ho et al. (2020) unless stated otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ddpmkit.config.diffusion import (  # noqa: F401 (re-exported)
    LEARNED_VARIANCES,
    LOSSES,
    PREDICTIONS,
    VARIANCES,
    DiffusionConfig,
)
from ddpmkit.config.messages import check_choice
from ddpmkit.errors import ConfigError
from ddpmkit.likelihood import discretized_gaussian_log_likelihood, normal_kl
from ddpmkit.loss_weights import loss_weights
from ddpmkit.precision import autocast_disabled
from ddpmkit.schedules import Schedule, ScheduleTables, make_schedule, shifted_schedule
from ddpmkit.seeding import PerSampleGenerator
from ddpmkit.timesteps import uniform_timesteps

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def normal_like(
    shape: tuple[int, ...],
    generator: torch.Generator | PerSampleGenerator | None,
    like: torch.Tensor,
) -> torch.Tensor:
    """Standard normal noise drawn from ``generator`` on its own device (so a CPU generator gives
    the same numbers whatever the data's device), returned with ``like``'s device and dtype. A
    :class:`~ddpmkit.seeding.PerSampleGenerator` draws row j of the noise from generator j."""
    if isinstance(generator, PerSampleGenerator):
        return generator.randn(shape, like.dtype).to(like.device)
    device = generator.device if generator is not None else like.device
    noise = torch.randn(tuple(shape), generator=generator, device=device, dtype=like.dtype)
    return noise.to(like.device)


def loss_dtype(data_dtype: torch.dtype) -> torch.dtype:
    """The dtype the training loss is computed in: the data's, but at least float32 (float64
    data stays float64; bf16/fp16 data and model outputs are promoted)."""
    return torch.promote_types(data_dtype, torch.float32)


def check_learned_variance_respacing(
    variance: str, num_steps: int, trained_steps: int | None
) -> None:
    """Refuse the raw ``learned`` variance on a process of ``num_steps`` < ``trained_steps``.

    With ``variance="learned"`` the network outputs log σ² of p_θ(x_{t−1}|x_t) for the T-step
    process it was trained on, where each step's variance lies between β̃_t and β_t (Nichol &
    Dhariwal 2021, §3.1). Respacing to K < T steps (ibid. §4) makes every step longer:
    β'_i = 1 − ᾱ_{s_i}/ᾱ_{s_{i−1}} and β̃'_i grow with the stride (at K = 50 of T = 1000 up to
    about 19 times β_{s_i} and β̃_{s_i}, linear and cosine schedules), so the trained log σ² is
    the wrong variance and ancestral samples (and the bound) get far too little noise.

    Why refuse rather than convert: the only conversion is to read the raw log σ² as a fraction
    of [log β̃_t, log β_t] and reuse that fraction on [log β̃'_i, log β'_i]. It divides by
    log β_t − log β̃_t, which tends to 0 at large t (8e−7 at t = T, linear schedule), so it
    amplifies the network's error without bound and extrapolates outside the range; nothing in
    training constrains the raw output to that range either. ``learned_range`` learns exactly
    that fraction (eq. 15), which is why it respaces. DDIM (any η), DPM-Solver++ and Heun do not
    use the variance and work at any step count.
    """
    if variance == "learned" and trained_steps is not None and num_steps < trained_steps:
        raise ConfigError(
            f"variance='learned' (the network outputs log σ² directly) is only valid on the "
            f"{trained_steps}-step process it was trained on, not on {num_steps} respaced steps "
            f"(their variances differ): sample with all {trained_steps} steps "
            f"(--steps {trained_steps}), use a sampler that ignores the variance (ddim, dpm++, "
            "heun), or train with diffusion.variance=learned_range, which carries over to "
            "respaced steps"
        )


@dataclass
class Prediction:
    """What a network call says about x_0 given x_t, all shaped like x_t. ε̂ and x̂_0 are tied by
    x_t = √ᾱ_t x̂_0 + √(1−ᾱ_t) ε̂ (Ho et al. eq. 4); ``variance`` is the network's raw variance
    output (learned variances), else None."""

    eps: torch.Tensor
    x0: torch.Tensor
    variance: torch.Tensor | None = None


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


@dataclass
class BoundTerms:
    """The variational bound of each image in bits/dim, with its parts (all shaped (B,))."""

    total: torch.Tensor
    prior: torch.Tensor  # L_T
    decoder: torch.Tensor  # L_0 = −log p_θ(x_0 | x_1)
    kl_sum: torch.Tensor  # Σ_{t=2..T} L_{t−1}
    per_timestep: torch.Tensor | None = None  # (B, T): L_0, L_1, …, L_{T−1}


def posterior_mean_variance(
    tables: ScheduleTables, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, variance and clipped log variance of q(x_{t−1} | x_t, x_0) (eq. 6–7) on the
    process of ``tables`` (the trained one, or a time grid's respaced one)."""
    mean = (
        tables.coef("posterior_mean_coef1", t, x_t) * x0
        + tables.coef("posterior_mean_coef2", t, x_t) * x_t
    )
    variance = tables.coef("posterior_variance", t, x_t).expand_as(x_t)
    log_variance = tables.coef("posterior_log_variance_clipped", t, x_t).expand_as(x_t)
    return mean, variance, log_variance


def reverse_log_variance(
    tables: ScheduleTables,
    variance: str,
    t: torch.Tensor,
    x_t: torch.Tensor,
    values: torch.Tensor | None,
) -> torch.Tensor:
    """log σ_t² of p_θ(x_{t−1}|x_t) on the process of ``tables``: β̃_t (fixed_small), β_t
    (fixed_large), the network's output (learned), or log σ² = v log β_t + (1 − v) log β̃_t with
    v = (output + 1)/2 (learned_range, Nichol & Dhariwal 2021, eq. 15). The raw ``learned``
    output holds only on the process it was trained on (see
    :func:`check_learned_variance_respacing`)."""
    if variance == "fixed_small":
        return tables.coef("posterior_log_variance_clipped", t, x_t).expand_as(x_t)
    if variance == "fixed_large":
        return tables.coef("fixed_large_log_variance", t, x_t).expand_as(x_t)
    assert values is not None, "learned variances need the model's variance output"
    if variance == "learned":
        return values
    fraction = (values + 1.0) / 2.0
    log_small = tables.coef("posterior_log_variance_clipped", t, x_t)
    log_large = tables.coef("log_betas", t, x_t)
    return fraction * log_large + (1.0 - fraction) * log_small


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
        vb_weight: float = 0.001,
        loss_weights: torch.Tensor | None = None,
    ) -> None:
        check_choice("prediction", prediction, PREDICTIONS)
        check_choice("variance", variance, VARIANCES)
        check_choice("loss", loss, LOSSES)
        self.schedule = schedule
        self.prediction = prediction
        self.variance = variance
        self.loss = loss
        if loss == "hybrid" and variance not in LEARNED_VARIANCES:
            raise ConfigError("loss='hybrid' trains the variance: use variance='learned_range'")
        self.vb_weight = vb_weight
        self.loss_weights = loss_weights  # (T,) float64 weights of the simple loss, or None
        self.tables = ScheduleTables(schedule)

    @classmethod
    def from_config(cls, config: DiffusionConfig) -> GaussianDiffusion:
        """The process of ``config``: this class, or :class:`ddpmkit.edm.EDMDiffusion` for
        ``process=edm``."""
        config.validate()
        if config.process == "edm":
            from ddpmkit.edm import EDMDiffusion  # a subclass: imports this module

            return EDMDiffusion(config)
        schedule = make_schedule(config.schedule, config.num_steps)
        schedule = shifted_schedule(schedule, config.schedule_shift)
        weights = loss_weights(schedule.alphas_cumprod, config.prediction, config)
        return cls(
            schedule, config.prediction, config.variance, config.loss, config.vb_weight, weights
        )

    @property
    def num_steps(self) -> int:
        return self.schedule.num_steps

    # ------------------------------------------------------------------ coefficient lookup
    def coef(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Entry ``t`` of the named schedule array, shaped to broadcast against ``like``."""
        return self.tables.coef(name, t, like)

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
        return posterior_mean_variance(self.tables, x0, x_t, t)

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
    def split_output(
        self, output: torch.Tensor, x_t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(prediction, variance values) of a model output. Learned variances stack the variance
        values after the prediction on the channel axis; fixed variances have none."""
        learned = self.variance in LEARNED_VARIANCES
        expected = (x_t.shape[0], x_t.shape[1] * (2 if learned else 1), *x_t.shape[2:])
        if tuple(output.shape) != expected:
            raise ConfigError(
                f"the model returned shape {tuple(output.shape)} for input {tuple(x_t.shape)}; "
                f"with variance='{self.variance}' it must return {expected}"
                + (" (set model.learned_variance=true)" if learned else "")
            )
        if not learned:
            return output, None
        prediction, values = output.chunk(2, dim=1)
        return prediction, values

    def interpret(self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> Prediction:
        """Turn a raw prediction (ε, x_0 or v) into (ε, x_0)."""
        if self.prediction == "eps":
            eps = output
            x0 = self.x0_from_eps(x_t, t, eps)
        elif self.prediction == "x0":
            x0 = output
            eps = self.eps_from_x0(x_t, t, x0)
        else:
            x0 = self.x0_from_v(x_t, t, output)
            eps = self.eps_from_v(x_t, t, output)
        return Prediction(eps=eps, x0=x0)

    def model_input(self, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the network is called with at (x_t, t): (x_t, t) itself (EDM scales both)."""
        return x_t, t

    def loss_prediction(self, raw: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """The network's prediction in the space of :meth:`training_target`: its raw output."""
        return raw

    def training_sampler(self):
        """The distribution of t that defines the training objective: None, uniform."""
        return None

    def read_output(self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> Prediction:
        """A raw network output read through the parameterisation (ε, x_0 or v), with its
        variance output."""
        raw, variance = self.split_output(output, x_t)
        pred = self.interpret(raw, x_t, t)
        return Prediction(pred.eps, pred.x0, variance)

    def clip(self, pred: Prediction, x_t: torch.Tensor, t: torch.Tensor) -> Prediction:
        """x̂_0 clamped to [−1, 1] and ε̂ recomputed from it, so that both stay consistent: the
        one place x̂_0 is clipped (sampling, the bound)."""
        x0 = pred.x0.clamp(-1.0, 1.0)
        return Prediction(self.eps_from_x0(x_t, t, x0), x0, pred.variance)

    def log_variance(
        self, t: torch.Tensor, x_t: torch.Tensor, values: torch.Tensor | None
    ) -> torch.Tensor:
        """log σ_t² of p_θ(x_{t−1}|x_t) for this diffusion's variance
        (:func:`reverse_log_variance`)."""
        return reverse_log_variance(self.tables, self.variance, t, x_t, values)

    def reverse_step(
        self,
        output: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        clip_x0: bool = False,
        detach_mean: bool = False,
    ) -> ReverseStep:
        """p_θ(x_{t−1} | x_t) from a raw model output (:meth:`reverse_from`). ``detach_mean``
        stops gradients through the mean (L_vlb of the hybrid loss)."""
        prediction, values = self.split_output(output, x_t)
        if detach_mean:
            prediction = prediction.detach()
        pred = self.interpret(prediction, x_t, t)
        return self.reverse_from(Prediction(pred.eps, pred.x0, values), x_t, t, clip_x0)

    def reverse_from(
        self, pred: Prediction, x_t: torch.Tensor, t: torch.Tensor, clip_x0: bool = False
    ) -> ReverseStep:
        """p_θ(x_{t−1} | x_t) from a prediction: mean μ̃_t(x_t, x̂_0) (eq. 7 with x̂_0 from the
        model, which equals eq. 11 for ε-prediction) and the variance of :meth:`log_variance`."""
        if clip_x0:
            pred = self.clip(pred, x_t, t)
        mean, _, _ = self.q_posterior(pred.x0, x_t, t)
        log_variance = self.log_variance(t, x_t, pred.variance)
        return ReverseStep(mean, torch.exp(log_variance), log_variance, pred.x0, pred.eps)

    # ------------------------------------------------------------------ variational bound
    def prior_kl(self, x0: torch.Tensor) -> torch.Tensor:
        """L_T = KL(q(x_T | x_0) ‖ N(0, I)) per example, in nats summed over dimensions."""
        t = torch.full((x0.shape[0],), self.num_steps - 1, dtype=torch.long, device=x0.device)
        mean, _, log_var = self.q_mean_variance(x0, t)
        return (
            normal_kl(mean, log_var, torch.zeros_like(mean), torch.zeros_like(log_var))
            .flatten(1)
            .sum(dim=1)
        )

    def vb_terms(
        self, step: ReverseStep, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """L_{t−1} per example in nats summed over dimensions (Ho et al., eq. 5): the decoder
        term −log p_θ(x_0|x_1) with 8-bit bins at t = 1 (index 0), otherwise
        KL(q(x_{t−1}|x_t, x_0) ‖ p_θ(x_{t−1}|x_t))."""
        true_mean, _, true_log_var = self.q_posterior(x0, x_t, t)
        kl = normal_kl(true_mean, true_log_var, step.mean, step.log_variance).flatten(1).sum(1)
        decoder = (
            -discretized_gaussian_log_likelihood(x0, step.mean, 0.5 * step.log_variance)
            .flatten(1)
            .sum(1)
        )
        return torch.where(t == 0, decoder, kl)

    @torch.no_grad()
    def nll(
        self,
        model: Model | Callable[[torch.Tensor, torch.Tensor], Prediction],
        x0: torch.Tensor,
        generator: torch.Generator | None = None,
        clip_x0: bool = True,
        per_timestep: bool = False,
        progress: bool = False,
    ) -> BoundTerms:
        """The full variational bound L_vlb = L_T + Σ_{t>1} L_{t−1} + L_0 (Ho et al., eq. 5) of
        each image, in bits/dim: every term evaluated once at a fresh q(x_t|x_0) draw (T network
        calls per batch). ``x0`` must hold 8-bit data scaled to [−1, 1] for the decoder term.
        ``model`` is a network (its raw output is read by this diffusion) or a Denoiser (its
        :class:`Prediction`; e.g. a class-conditional network at given labels)."""
        from ddpmkit.sampling.denoiser import Denoiser  # the sampling package imports this one

        batch, dims = x0.shape[0], x0[0].numel()
        to_bits = 1.0 / (dims * math.log(2))
        terms = torch.zeros(batch, self.num_steps, dtype=torch.float64, device=x0.device)
        network = not isinstance(model, Denoiser)
        for i in tqdm(
            range(self.num_steps - 1, -1, -1), desc="bound", disable=not progress, leave=False
        ):
            t = torch.full((batch,), i, dtype=torch.long, device=x0.device)
            noise = normal_like(x0.shape, generator, x0)
            x_t = self.q_sample(x0, t, noise)
            if network:
                output = self.read_output(model(*self.model_input(x_t, t)), x_t, t)
            else:
                output = model(x_t, t)
            step = self.reverse_from(output, x_t, t, clip_x0=clip_x0)
            terms[:, i] = self.vb_terms(step, x0, x_t, t).double() * to_bits
        prior = self.prior_kl(x0).double() * to_bits
        decoder = terms[:, 0]
        kl_sum = terms[:, 1:].sum(dim=1)
        return BoundTerms(
            total=prior + kl_sum + decoder,
            prior=prior,
            decoder=decoder,
            kl_sum=kl_sum,
            per_timestep=terms if per_timestep else None,
        )

    # ------------------------------------------------------------------ training
    def sample_timesteps(
        self, batch: int, device: torch.device, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """t ~ Uniform{0, …, T−1}, one per example (Algorithm 1)."""
        return uniform_timesteps(self.num_steps, batch, generator, device)

    def training_target(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network is asked to output: ε, x_0 or v."""
        if self.prediction == "eps":
            return eps
        if self.prediction == "x0":
            return x0
        return self.v_from_x0_eps(x0, eps, t)

    def elementwise_loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.loss in ("l2", "hybrid"):
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
        weights: torch.Tensor | None = None,
    ) -> LossOutput:
        """The per-example training loss at t (uniform unless given), its weighted batch mean.

        - ``l2``/``l1``/``huber``: L_simple of eq. 14 generalised to the chosen target (ε/x_0/v)
          and distance, a mean over pixels.
        - ``hybrid``: L_simple + λ·T·L_t with L_t in bits/dim and the mean detached inside L_t,
          so that L_vlb trains the variance only (Nichol & Dhariwal 2021, §3.1: λ = 0.001; the
          factor T turns one term into an estimate of the whole sum, i.e. λ·T/1000 of the
          reference implementation's per-term loss for λ = 0.001).
        - ``kl``: T·L_t in bits/dim, an unbiased estimate of L_vlb − L_T per dimension.

        ``loss_weights`` (from ``diffusion.loss_weight``: min-SNR-γ, P2) multiply the simple
        loss per t, before the hybrid's VLB term is added.

        ``weights`` (e.g. importance weights 1/(T p_t)) multiply the per-example values in the
        mean, so that a non-uniform t keeps the estimate unbiased.

        Precision: only the network call sees autocast. Its output is cast to
        :func:`loss_dtype` (float32, or float64 for float64 data) and the targets, the elementwise
        loss and the VLB terms are computed with autocast switched off, so a bf16 autocast run
        (``train.amp``) differs from a float32 one only through the network's own rounding.
        """
        batch = x0.shape[0]
        if t is None:
            t = self.sample_timesteps(batch, x0.device, generator)
        t = self._check_t(t, batch)
        if noise is None:
            noise = normal_like(x0.shape, generator, x0)
        x_t = self.q_sample(x0, t, noise)
        output = model(*self.model_input(x_t, t))
        # Everything after the network runs in (at least) float32 with autocast off: under bf16
        # autocast the targets, the elementwise loss and the VLB terms would otherwise inherit
        # bf16 rounding (8-bit mantissa) from the output or from autocast's op lists.
        dtype = loss_dtype(x0.dtype)
        with autocast_disabled(x0.device):
            x0, noise, x_t = x0.to(dtype), noise.to(dtype), x_t.to(dtype)
            output = output.to(dtype)
            raw, _ = self.split_output(output, x_t)
            prediction = self.loss_prediction(raw, x_t, t)
            dims = x0[0].numel()
            if self.loss == "kl":
                step = self.reverse_step(output, x_t, t)
                vb = self.vb_terms(step, x0, x_t, t)
                per_example = self.num_steps * vb / (dims * math.log(2))
            else:
                target = self.training_target(x0, noise, t)
                per_example = self.elementwise_loss(prediction, target).flatten(1).mean(dim=1)
                if self.loss_weights is not None:  # min-SNR-γ, P2 (ddpmkit.loss_weights)
                    table = self.loss_weights.to(device=t.device, dtype=dtype)
                    per_example = per_example * table[t]
                if self.loss == "hybrid":
                    step = self.reverse_step(output, x_t, t, detach_mean=True)
                    vb = self.vb_terms(step, x0, x_t, t) / (dims * math.log(2))
                    per_example = per_example + self.vb_weight * self.num_steps * vb
            weighted = per_example if weights is None else per_example * weights.to(dtype)
            return LossOutput(loss=weighted.mean(), per_example=per_example, t=t)
