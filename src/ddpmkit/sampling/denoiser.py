"""The one interface between a trained network and every sampler, and its wrappers.

A :class:`Denoiser` is called with x_t and the original integer timesteps t (shape (B,)) and
returns a :class:`~ddpmkit.diffusion.Prediction`: ε̂, x̂_0 and, for learned variances, the
network's raw variance output. Integrators never call a network themselves, so conditioning,
guidance, clipping and known pixels are wrappers around a denoiser and every sampler gains them
at once (in the spirit of k-diffusion's ``Denoiser``). One class per job:

- :class:`ModelDenoiser`: a network ``model(x_t, t[, y])`` read through the diffusion's
  parameterisation, optionally at fixed class labels, optionally with classifier-free guidance;
- :class:`ClippedDenoiser`: x̂_0 clamped to [−1, 1] (:meth:`GaussianDiffusion.clip`);
- :class:`KnownPixels`: the known pixels of x̂_0 replaced by an image (inpainting).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from ddpmkit.diffusion import GaussianDiffusion, Model, Prediction

__all__ = [
    "ClippedDenoiser",
    "Denoiser",
    "KnownPixels",
    "ModelDenoiser",
    "Prediction",
    "as_denoiser",
    "guide",
    "timesteps_like",
]


class Denoiser(ABC):
    """``denoiser(x_t, t) -> Prediction`` with t the original timesteps of the trained process."""

    diffusion: GaussianDiffusion

    @abstractmethod
    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> Prediction: ...


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


class ModelDenoiser(Denoiser):
    """A network read through ``diffusion``'s parameterisation (ε, x_0 or v) and variance output.

    Without ``labels``: ``model(x_t, t)``. With ``labels`` (shape (B,)): a class-conditional
    network ``model(x_t, t, y)`` at those labels (the null class K asks it for the unconditional
    prediction). With ``guidance`` w > 0 also: classifier-free guidance (:func:`guide`) in a
    single call on the doubled batch [x_t, x_t] with labels [y, null], or in two calls when the
    doubled batch would exceed ``max_batch`` (on a 2-core CPU one call is faster up to 256
    images and slower beyond: BENCHMARKS.md)."""

    def __init__(
        self,
        model: Model,
        diffusion: GaussianDiffusion,
        labels: torch.Tensor | None = None,
        null_label: int | None = None,
        guidance: float = 0.0,
        max_batch: int | None = None,
    ) -> None:
        self.model = model
        self.diffusion = diffusion
        self.labels = labels
        self.null_label = null_label
        self.guidance = guidance
        self.max_batch = max_batch

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> Prediction:
        read = self.diffusion.read_output
        x_in, t_in = self.diffusion.model_input(x_t, t)  # (x_t, t) itself but for EDM
        if self.labels is None:
            return read(self.model(x_in, t_in), x_t, t)
        labels = self.labels.to(x_t.device)
        if self.guidance == 0:
            return read(self.model(x_in, t_in, labels), x_t, t)
        null = torch.full_like(labels, self.null_label)
        if self.max_batch is not None and 2 * len(x_t) > self.max_batch:
            conditional, unconditional = (
                self.model(x_in, t_in, labels),
                self.model(x_in, t_in, null),
            )
        else:
            output = self.model(
                torch.cat([x_in, x_in]), torch.cat([t_in, t_in]), torch.cat([labels, null])
            )
            conditional, unconditional = output.chunk(2)
        return guide(read(conditional, x_t, t), read(unconditional, x_t, t), self.guidance)

    def at(self, labels: torch.Tensor | None) -> ModelDenoiser:
        """The same network, guidance and batch limit at other labels (e.g. a batch's rows)."""
        return ModelDenoiser(
            self.model, self.diffusion, labels, self.null_label, self.guidance, self.max_batch
        )


class ClippedDenoiser(Denoiser):
    """x̂_0 clamped to [−1, 1] and ε̂ recomputed from it (:meth:`GaussianDiffusion.clip`): the
    samplers' last step on a prediction, after any other wrapper has combined predictions."""

    def __init__(self, inner: Denoiser) -> None:
        self.inner = inner
        self.diffusion = inner.diffusion

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> Prediction:
        return self.diffusion.clip(self.inner(x_t, t), x_t, t)


class KnownPixels(Denoiser):
    """x̂_0 with the known pixels (``mask`` = 1) replaced by ``known``; ε̂ recomputed from it."""

    def __init__(self, inner: Denoiser, known: torch.Tensor, mask: torch.Tensor) -> None:
        self.inner = inner
        self.diffusion = inner.diffusion
        self.known = known
        self.mask = mask

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> Prediction:
        pred = self.inner(x_t, t)
        mask = self.mask.to(x_t.device, x_t.dtype)
        x0 = mask * self.known.to(x_t.device, x_t.dtype) + (1 - mask) * pred.x0
        return Prediction(self.diffusion.eps_from_x0(x_t, t, x0), x0, pred.variance)


def as_denoiser(model: Model | Denoiser, diffusion: GaussianDiffusion) -> Denoiser:
    """``model`` itself if it is a :class:`Denoiser`, else the network read by ``diffusion``."""
    return model if isinstance(model, Denoiser) else ModelDenoiser(model, diffusion)


def timesteps_like(t: int | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A (B,) LongTensor of timestep ``t`` on ``x``'s device."""
    return torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)
