"""Neural networks: the U-Net noise predictor and its building blocks (pure PyTorch).

It imports torch, its own config (:mod:`ddpmkit.config.model`), errors and precision only: the
network knows nothing of the diffusion, the data or training."""

from __future__ import annotations

from ddpmkit.nn.unet import UNet, UNetConfig

__all__ = ["UNet", "UNetConfig"]
