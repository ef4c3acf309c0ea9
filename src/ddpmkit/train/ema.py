"""The exponential moving average of the weights that sampling uses."""

from __future__ import annotations

import torch


def ema_decay(step: int, decay: float, warmup: bool) -> float:
    """EMA decay at optimizer step ``step`` (0-based); with warm-up min(decay, (1+k)/(10+k))."""
    if not warmup:
        return decay
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """θ_ema ← decay·θ_ema + (1 − decay)·θ; buffers are copied."""
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)
