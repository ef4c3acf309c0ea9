"""What every integrator shares: the signature, and what a callback sees after each step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from ddpmkit.sampling.denoiser import Denoiser
from ddpmkit.sampling.grid import TimeGrid
from ddpmkit.seeding import NoiseGenerator


@dataclass
class SamplerStep:
    """What a callback sees after each step."""

    index: int  # 0-based step counter
    total: int  # number of steps
    t: int  # the trained timestep the model was called at
    x: torch.Tensor  # x after this step (x_{t−1} in the paper's notation)
    pred_x0: torch.Tensor  # the model's estimate of x_0 at this step


Callback = Callable[[SamplerStep], None]


class Integrator(Protocol):
    """``fn(denoiser, x, grid, *, noise, callback, **options) -> x``: from x at the grid's last
    timestep to x_0, calling ``denoiser`` only at the grid's timesteps, drawing any noise from
    ``noise`` and calling ``callback`` after every step."""

    def __call__(
        self,
        denoiser: Denoiser,
        x: torch.Tensor,
        grid: TimeGrid,
        *,
        noise: NoiseGenerator | None = None,
        callback: Callback | None = None,
    ) -> torch.Tensor: ...
