"""Residual building blocks of the U-Net and its resampling layers.

* :class:`ResBlock` — the ResNet block of Ho et al. (2020, appendix B) as ported in
  improved-diffusion (Nichol & Dhariwal 2021), with "add" or "scale_shift" time conditioning.
* :class:`ConvNextBlock` — the ConvNeXt block (Liu et al. 2022) as adapted in "The Annotated
  Diffusion Model".
* :class:`Downsample` / :class:`Upsample` — 3x3 stride-2 conv; nearest x2 then a 3x3 conv.

``norm_eps`` is the epsilon of every GroupNorm (PyTorch's default 1e-5 unless given; Ho et al.'s
TensorFlow code and diffusers' ports of it use 1e-6).
"""

from __future__ import annotations

import torch
from torch import nn

from ddpmkit.config.model import (
    DOWNSAMPLE_PADDINGS,  # noqa: E402 (defined with the config)
    TIME_CONDITIONINGS,  # noqa: E402 (defined with the config)
)
from ddpmkit.nn.norm import GroupNorm


def zero_module(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to zero and return it (improved-diffusion)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """ResNet block: GN→SiLU→conv3x3 → time conditioning → GN→SiLU→Dropout→conv3x3, + skip.

    Time conditioning (``emb`` is the output of the U-Net's time MLP, passed through SiLU→Linear):

    * ``"add"`` (Ho et al. 2020): ``h = h + proj(emb)`` before the second GroupNorm.
    * ``"scale_shift"`` (Nichol & Dhariwal 2021, "use_scale_shift_norm"):
      ``h = GN(h) * (1 + scale) + shift`` with ``scale, shift = proj(emb).chunk(2)``.

    The skip is the identity, or a 1x1 conv when the channel count changes. The last conv is
    zero-initialised, so a fresh block is the identity (or the 1x1 skip).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        time_dim: int,
        *,
        norm_groups: int,
        dropout: float = 0.0,
        time_conditioning: str = "scale_shift",
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if time_conditioning not in TIME_CONDITIONINGS:
            raise ValueError(f"unknown time_conditioning {time_conditioning!r}")
        self.scale_shift = time_conditioning == "scale_shift"
        self.in_layers = nn.Sequential(
            GroupNorm(norm_groups, in_channels, eps=norm_eps),
            nn.SiLU(),
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
        )
        self.time_proj = nn.Sequential(
            nn.SiLU(),
            nn.Linear(time_dim, 2 * out_channels if self.scale_shift else out_channels),
        )
        # scale and shift: two maps in one weight (train.muon)
        self.stacked_outputs = {"time_proj.1": 2} if self.scale_shift else {}
        self.out_norm = GroupNorm(norm_groups, out_channels, eps=norm_eps)
        self.out_layers = nn.Sequential(
            nn.SiLU(),
            nn.Dropout(dropout),
            zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip: nn.Module = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        t = self.time_proj(emb)[:, :, None, None].to(h.dtype)
        if self.scale_shift:
            scale, shift = t.chunk(2, dim=1)
            h = self.out_norm(h) * (1 + scale) + shift
        else:
            h = self.out_norm(h + t)
        return self.skip(x) + self.out_layers(h)


class ConvNextBlock(nn.Module):
    """ConvNeXt block (Liu et al. 2022) as in "The Annotated Diffusion Model".

    depthwise conv7x7 → time conditioning → GN(1)→conv3x3 (→ ``out·mult``)→GELU→Dropout→GN(1)
    →conv3x3 (→ ``out``), + 1x1 residual on channel change. The time MLP is GELU→Linear; with
    ``"add"`` its output is added after the depthwise conv (exactly the annotated block), with
    ``"scale_shift"`` it gives ``h * (1 + scale) + shift`` there instead. The last conv is
    zero-initialised, as in :class:`ResBlock`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        time_dim: int,
        *,
        mult: int = 2,
        dropout: float = 0.0,
        time_conditioning: str = "add",
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if time_conditioning not in TIME_CONDITIONINGS:
            raise ValueError(f"unknown time_conditioning {time_conditioning!r}")
        self.scale_shift = time_conditioning == "scale_shift"
        hidden = out_channels * mult
        self.ds_conv = nn.Conv2d(in_channels, in_channels, 7, padding=3, groups=in_channels)
        self.time_proj = nn.Sequential(
            nn.GELU(),
            nn.Linear(time_dim, 2 * in_channels if self.scale_shift else in_channels),
        )
        self.stacked_outputs = {"time_proj.1": 2} if self.scale_shift else {}
        self.net = nn.Sequential(
            GroupNorm(1, in_channels, eps=norm_eps),
            nn.Conv2d(in_channels, hidden, 3, padding=1),
            nn.GELU(),
            nn.Dropout(dropout),
            GroupNorm(1, hidden, eps=norm_eps),
            zero_module(nn.Conv2d(hidden, out_channels, 3, padding=1)),
        )
        self.skip: nn.Module = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.ds_conv(x)
        t = self.time_proj(emb)[:, :, None, None].to(h.dtype)
        if self.scale_shift:
            scale, shift = t.chunk(2, dim=1)
            h = h * (1 + scale) + shift
        else:
            h = h + t
        return self.skip(x) + self.net(h)


class Downsample(nn.Module):
    """Halve the resolution with a 3x3 conv of stride 2 (Ho et al. 2020).

    ``padding="symmetric"`` pads one pixel on every side (PyTorch ``padding=1``); ``"same"`` pads
    one pixel on the right and bottom only, as TensorFlow's ``"SAME"`` does at stride 2 on even
    sizes (Ho et al.'s code; diffusers' ``downsample_padding=0``).
    """

    def __init__(self, channels: int, padding: str = "symmetric") -> None:
        super().__init__()
        if padding not in DOWNSAMPLE_PADDINGS:
            raise ValueError(f"unknown downsample padding {padding!r}")
        self.same = padding == "same"
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0 if self.same else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same:
            x = nn.functional.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour x2, then a 3x3 conv (Ho et al. 2020)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))
