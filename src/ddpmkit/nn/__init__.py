"""Neural networks: the U-Net noise predictor and its building blocks (pure PyTorch)."""

from __future__ import annotations

from ddpmkit.nn.unet import UNet, UNetConfig

__all__ = ["UNet", "UNetConfig"]
