"""Compatibility: the Denoiser interface and its wrappers live in
:mod:`ddpmkit.sampling.denoiser`.

``ConditionalDenoiser`` and ``GuidedModelDenoiser`` of earlier versions are the one
:class:`~ddpmkit.sampling.denoiser.ModelDenoiser` at given labels (and guidance weight).
"""

from __future__ import annotations

import torch

from ddpmkit.diffusion import GaussianDiffusion, Model
from ddpmkit.sampling.denoiser import (
    ClippedDenoiser,
    Denoiser,
    KnownPixels,
    ModelDenoiser,
    Prediction,
    as_denoiser,
    guide,
    timesteps_like,
)

__all__ = [
    "ClippedDenoiser",
    "ConditionalDenoiser",
    "Denoiser",
    "GuidedModelDenoiser",
    "KnownPixels",
    "ModelDenoiser",
    "Prediction",
    "as_denoiser",
    "guide",
    "timesteps_like",
]


def ConditionalDenoiser(  # noqa: N802 - the class name of earlier versions
    model: Model, diffusion: GaussianDiffusion, labels: torch.Tensor
) -> ModelDenoiser:
    """A class-conditional network at fixed labels: ``ModelDenoiser(model, diffusion, labels)``."""
    return ModelDenoiser(model, diffusion, labels)


def GuidedModelDenoiser(  # noqa: N802 - the class name of earlier versions
    model: Model,
    diffusion: GaussianDiffusion,
    labels: torch.Tensor,
    null_label: int,
    weight: float,
    max_batch: int | None = None,
) -> ModelDenoiser:
    """Classifier-free guidance of one network: ``ModelDenoiser(..., guidance=weight)``."""
    return ModelDenoiser(model, diffusion, labels, null_label, weight, max_batch)
