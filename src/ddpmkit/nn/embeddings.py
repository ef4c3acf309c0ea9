"""Sinusoidal timestep embedding (Vaswani et al. 2017, as used by Ho et al. 2020)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ddpmkit.errors import ConfigError


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Embed timesteps ``t`` of shape (B,) into (B, dim) float32 features.

    Follows ``get_timestep_embedding`` of Ho et al. (2020, ``diffusion_tf/nn.py``): with
    ``half = dim // 2``, frequency ``i`` is ``exp(-log(max_period) * i / (half - 1))`` for
    ``i = 0 … half-1`` (so the frequencies span exactly 1 … 1/max_period), and the output is
    ``[sin(t·f_0) … sin(t·f_{half-1}), cos(t·f_0) … cos(t·f_{half-1})]`` — sines first, then
    cosines. An odd ``dim`` gets one trailing zero column.
    """
    if dim < 2:
        raise ConfigError(f"timestep embedding dimension must be at least 2, got {dim}")
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=t.device) / max(half - 1, 1)
    freqs = torch.exp(-math.log(max_period) * exponent)
    args = t.to(torch.float32)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        emb = nn.functional.pad(emb, (0, 1))
    return emb


class SinusoidalTimeEmbedding(nn.Module):
    """Module wrapper of :func:`timestep_embedding` (no parameters)."""

    def __init__(self, dim: int, max_period: float = 10000.0) -> None:
        super().__init__()
        if dim < 2:
            raise ConfigError(f"timestep embedding dimension must be at least 2, got {dim}")
        self.dim = dim
        self.max_period = max_period

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return timestep_embedding(t, self.dim, self.max_period)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, max_period={self.max_period:g}"
