"""The moving average of the weights that sampling uses: exponential, or the power-function
profile of Karras et al. (2024, "Analyzing and Improving the Training Dynamics of Diffusion
Models", §3.1)."""

from __future__ import annotations

import functools

import numpy as np
import torch

from ddpmkit.config import TrainConfig


def ema_decay(step: int, decay: float, warmup: bool) -> float:
    """EMA decay at optimizer step ``step`` (0-based); with warm-up min(decay, (1+k)/(10+k))."""
    if not warmup:
        return decay
    return min(decay, (1 + step) / (10 + step))


@functools.lru_cache(maxsize=8)
def power_ema_exponent(std: float) -> float:
    """γ of the power profile whose relative standard deviation is ``std``: the largest real
    root of σ_rel² = (γ + 1)/((γ + 2)²(γ + 3)) (Karras et al. 2024, eq. 3), i.e. of
    σ²γ³ + 7σ²γ² + (16σ² − 1)γ + 12σ² − 1 = 0."""
    v = std * std
    roots = np.roots([v, 7 * v, 16 * v - 1, 12 * v - 1])
    return float(max(r.real for r in roots if abs(r.imag) < 1e-9))


def power_ema_decay(step: int, exponent: float) -> float:
    """β at optimizer step ``step`` (0-based) of the power EMA: (1 − 1/t)^(γ+1), t = step + 1,
    so the average of t steps weights step i by i^(γ+1) − (i−1)^(γ+1) ∝ i^γ."""
    t = step + 1
    return (1.0 - 1.0 / t) ** (exponent + 1.0)


def decay_at(step: int, config: TrainConfig) -> float:
    """The EMA decay of ``config`` (``train.ema``) at optimizer step ``step``."""
    if config.ema == "power":
        return power_ema_decay(step, power_ema_exponent(config.ema_std))
    return ema_decay(step, config.ema_decay, config.ema_warmup)


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """θ_ema ← decay·θ_ema + (1 − decay)·θ; buffers are copied."""
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)
