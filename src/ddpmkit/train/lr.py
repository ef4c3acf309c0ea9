"""The learning rate at a step: linear warm-up, then constant, cosine or linear decay."""

from __future__ import annotations

import math

from ddpmkit.config import TrainConfig


def learning_rate(step: int, config: TrainConfig, time_fraction: float = 0.0) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then constant, or a decay to 0: cosine
    (Loshchilov & Hutter 2017) or linear (Bergsma et al. 2025, "Straight to zero"). The
    decay follows the larger of the share of steps done and ``time_fraction``, the share of the
    time limit used, so a time-limited run ends its decay when its time runs out."""
    if config.warmup_steps and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.lr_schedule == "constant":
        return config.lr
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, max((step - config.warmup_steps) / span, time_fraction))
    if config.lr_schedule == "linear":
        return config.lr * (1.0 - progress)
    return config.lr * 0.5 * (1 + math.cos(math.pi * progress))
