"""Sinusoidal timestep embedding (Vaswani et al. 2017, as used by Ho et al. 2020)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ddpmkit.config.model import TIME_FREQUENCY_ORDERS  # noqa: E402 (defined with the config)
from ddpmkit.errors import ConfigError


def timestep_embedding(
    t: torch.Tensor,
    dim: int,
    max_period: float = 10000.0,
    *,
    flip_sin_to_cos: bool = False,
    freq_shift: int = 1,
    frequencies: str = "ddpmkit",
) -> torch.Tensor:
    """Embed timesteps ``t`` of shape (B,) into (B, dim) float32 features.

    Follows ``get_timestep_embedding`` of Ho et al. (2020, ``diffusion_tf/nn.py``): with
    ``half = dim // 2``, frequency ``i`` is ``exp(-log(max_period) * i / (half - 1))`` for
    ``i = 0 … half-1`` (so the frequencies span exactly 1 … 1/max_period), and the output is
    ``[sin(t·f_0) … sin(t·f_{half-1}), cos(t·f_0) … cos(t·f_{half-1})]`` — sines first, then
    cosines. An odd ``dim`` gets one trailing zero column.

    The options reproduce diffusers' ``get_timestep_embedding`` (``Timesteps``): ``freq_shift``
    replaces the 1 in ``half - 1`` (diffusers' ``freq_shift``/``downscale_freq_shift``),
    ``flip_sin_to_cos`` puts the cosines first, and ``frequencies="diffusers"`` rounds the
    float32 exponent as diffusers does (``(-log(max_period) · i) / (half - shift)``) instead of
    ``-log(max_period) · (i / (half - shift))``: the two differ in the last bit of some
    frequencies, which is enough to move the output of a network by ~1e-6. The defaults are
    the original computation, bit for bit.
    """
    if dim < 2:
        raise ConfigError(f"timestep embedding dimension must be at least 2, got {dim}")
    if frequencies not in TIME_FREQUENCY_ORDERS:
        raise ConfigError(
            f"unknown time frequency order {frequencies!r}; expected one of "
            f"{', '.join(TIME_FREQUENCY_ORDERS)}"
        )
    half = dim // 2
    index = torch.arange(half, dtype=torch.float32, device=t.device)
    if frequencies == "diffusers":
        exponent = -math.log(max_period) * index
        freqs = torch.exp(exponent / max(half - freq_shift, 1))
    else:
        exponent = index / max(half - freq_shift, 1)
        freqs = torch.exp(-math.log(max_period) * exponent)
    args = t.to(torch.float32)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=1)
    if dim % 2:
        emb = nn.functional.pad(emb, (0, 1))
    return emb


class SinusoidalTimeEmbedding(nn.Module):
    """Module wrapper of :func:`timestep_embedding` (no parameters)."""

    def __init__(
        self,
        dim: int,
        max_period: float = 10000.0,
        *,
        flip_sin_to_cos: bool = False,
        freq_shift: int = 1,
        frequencies: str = "ddpmkit",
    ) -> None:
        super().__init__()
        if dim < 2:
            raise ConfigError(f"timestep embedding dimension must be at least 2, got {dim}")
        self.dim = dim
        self.max_period = max_period
        self.flip_sin_to_cos = flip_sin_to_cos
        self.freq_shift = freq_shift
        self.frequencies = frequencies

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return timestep_embedding(
            t,
            self.dim,
            self.max_period,
            flip_sin_to_cos=self.flip_sin_to_cos,
            freq_shift=self.freq_shift,
            frequencies=self.frequencies,
        )

    def extra_repr(self) -> str:
        extra = ""
        if self.flip_sin_to_cos or self.freq_shift != 1 or self.frequencies != "ddpmkit":
            extra = (
                f", flip_sin_to_cos={self.flip_sin_to_cos}, freq_shift={self.freq_shift}, "
                f"frequencies={self.frequencies}"
            )
        return f"dim={self.dim}, max_period={self.max_period:g}{extra}"
