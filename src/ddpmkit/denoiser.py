"""The one interface between a trained network and every sampler.

A :class:`Denoiser` is called with x_t and the original integer timesteps t (shape (B,)) and
returns a :class:`Prediction`: ε̂, x̂_0 (unclipped) and, for learned variances, the network's raw
variance output. Samplers never call a network themselves: ancestral sampling and DDIM (on the
full or a respaced process) and the ODE solvers all read this prediction, so that conditioning,
guidance and editing are wrappers around a denoiser and every sampler gains them at once (in the
spirit of k-diffusion's ``Denoiser``).

Clipping x̂_0 to [−1, 1] is the samplers' last step on a prediction (:func:`clip_prediction`),
after any wrapper has combined predictions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from ddpmkit.diffusion import GaussianDiffusion, Model


@dataclass
class Prediction:
    """What a denoiser says about x_0 given x_t, all shaped like x_t. ε̂ and x̂_0 are tied by
    x_t = √ᾱ_t x̂_0 + √(1−ᾱ_t) ε̂ (Ho et al. eq. 4)."""

    eps: torch.Tensor
    x0: torch.Tensor
    variance: torch.Tensor | None = None  # the network's variance output (learned variances)


class Denoiser(ABC):
    """``denoiser(x_t, t) -> Prediction`` with t the original timesteps of the trained process."""

    diffusion: GaussianDiffusion

    @abstractmethod
    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> Prediction: ...


def read_output(
    diffusion: GaussianDiffusion, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
) -> Prediction:
    """A raw network output read through ``diffusion``'s parameterisation (ε, x_0 or v) and
    variance output."""
    raw, variance = diffusion.split_output(output, x_t)
    pred = diffusion.interpret(raw, x_t, t)
    return Prediction(pred.eps, pred.x0, variance)


class ModelDenoiser(Denoiser):
    """A network ``model(x_t, t)`` read through ``diffusion``'s parameterisation (ε, x_0 or v)
    and variance output."""

    def __init__(self, model: Model, diffusion: GaussianDiffusion) -> None:
        self.model = model
        self.diffusion = diffusion

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> Prediction:
        return read_output(self.diffusion, self.model(x_t, t), x_t, t)


def as_denoiser(model: Model | Denoiser, diffusion: GaussianDiffusion) -> Denoiser:
    """``model`` itself if it is a :class:`Denoiser`, else the network read by ``diffusion``."""
    return model if isinstance(model, Denoiser) else ModelDenoiser(model, diffusion)


def clip_prediction(
    diffusion: GaussianDiffusion, pred: Prediction, x_t: torch.Tensor, t: torch.Tensor
) -> Prediction:
    """x̂_0 clamped to [−1, 1] and ε̂ recomputed from it, so that both stay consistent."""
    x0 = pred.x0.clamp(-1.0, 1.0)
    return Prediction(diffusion.eps_from_x0(x_t, t, x0), x0, pred.variance)


def timesteps_like(t: int | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A (B,) LongTensor of timestep ``t`` on ``x``'s device."""
    return torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)


class ConditionalDenoiser(Denoiser):
    """A class-conditional network ``model(x_t, t, y)`` at fixed labels ``y`` (shape (B,); the
    null class K asks the same network for the unconditional prediction)."""

    def __init__(self, model: Model, diffusion: GaussianDiffusion, labels: torch.Tensor) -> None:
        self.model = model
        self.diffusion = diffusion
        self.labels = labels

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> Prediction:
        return read_output(self.diffusion, self.model(x_t, t, self.labels.to(x_t.device)), x_t, t)


def guide(conditional: Prediction, unconditional: Prediction, weight: float) -> Prediction:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6):
    ε̃ = (1 + w) ε_θ(x_t, y) − w ε_θ(x_t, ∅), w = 0 the conditional model. In the other common
    convention (GLIDE, diffusers' ``guidance_scale`` s): ε̃ = ε_∅ + s (ε_y − ε_∅), s = 1 + w.
    x̂_0 is affine in ε̂ at fixed x_t with weights summing to 1, so the same combination of the
    x̂_0's is the x̂_0 of ε̃. The variance output is the conditional one."""
    return Prediction(
        (1 + weight) * conditional.eps - weight * unconditional.eps,
        (1 + weight) * conditional.x0 - weight * unconditional.x0,
        conditional.variance,
    )


class GuidedDenoiser(Denoiser):
    """Classifier-free guidance of two denoisers (:func:`guide`); any two work, e.g. two
    :class:`ConditionalDenoiser` of one network at the labels and at the null class."""

    def __init__(self, conditional: Denoiser, unconditional: Denoiser, weight: float) -> None:
        self.conditional = conditional
        self.unconditional = unconditional
        self.weight = weight
        self.diffusion = conditional.diffusion

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> Prediction:
        if self.weight == 0:
            return self.conditional(x_t, t)
        return guide(self.conditional(x_t, t), self.unconditional(x_t, t), self.weight)


class GuidedModelDenoiser(Denoiser):
    """Classifier-free guidance of one class-conditional network ``model(x_t, t, y)`` in a
    single call on the doubled batch [x_t, x_t] with labels [y, null] (:func:`guide`), or in
    two calls when the doubled batch would exceed ``max_batch`` (on a 2-core CPU one call is
    faster up to 256 images and slower beyond: BENCHMARKS.md); weight 0 makes only the
    conditional call."""

    def __init__(
        self,
        model: Model,
        diffusion: GaussianDiffusion,
        labels: torch.Tensor,
        null_label: int,
        weight: float,
        max_batch: int | None = None,
    ) -> None:
        self.model = model
        self.diffusion = diffusion
        self.labels = labels
        self.null_label = null_label
        self.weight = weight
        self.max_batch = max_batch

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> Prediction:
        labels = self.labels.to(x_t.device)
        if self.weight == 0:
            return read_output(self.diffusion, self.model(x_t, t, labels), x_t, t)
        null = torch.full_like(labels, self.null_label)
        if self.max_batch is not None and 2 * len(x_t) > self.max_batch:
            conditional, unconditional = self.model(x_t, t, labels), self.model(x_t, t, null)
        else:
            output = self.model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([labels, null]))
            conditional, unconditional = output.chunk(2)
        return guide(
            read_output(self.diffusion, conditional, x_t, t),
            read_output(self.diffusion, unconditional, x_t, t),
            self.weight,
        )
