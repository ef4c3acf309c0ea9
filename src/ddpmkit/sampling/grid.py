"""Time grids: which trained timesteps a sampler visits, and the process over them.

A :class:`TimeGrid` is K trained timesteps t_0 < … < t_{K−1} together with

- ``base``: the trained process (or its first ``last + 1`` steps, for a run that starts at an
  intermediate x_t, as SDEdit does), whose ᾱ the ODE solvers read at the grid's timesteps;
- ``process``: the respaced process over the grid, with β'_k = 1 − ᾱ_{t_k}/ᾱ_{t_{k−1}} so that ᾱ
  is kept on the subset (Nichol & Dhariwal 2021, §4) — ``base`` itself when the grid holds every
  step — whose posterior coefficients ancestral sampling, DDIM and RePaint read at index k.

The network is always called at the trained timestep t_k; integrators walk k = K−1 … 0. Grids:
:meth:`TimeGrid.spaced` (evenly spread, both ends included), :meth:`TimeGrid.log_snr` (uniform in
λ = ½ log(ᾱ/(1 − ᾱ)), DPM-Solver's choice) and :meth:`TimeGrid.karras` (Karras et al.'s ρ = 7
schedule of σ̃ = √((1 − ᾱ)/ᾱ)); continuous grids are snapped to the nearest trained timesteps and
topped up to exactly K distinct ones, so the number of network calls is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from ddpmkit.diffusion import spaced_timesteps
from ddpmkit.errors import ConfigError
from ddpmkit.schedules import Schedule, ScheduleTables

KARRAS_RHO = 7.0


def _snap(coordinate: np.ndarray, count: int) -> list[int]:
    """``count`` distinct indices whose coordinates lie nearest a uniform grid over
    [coordinate[0], coordinate[-1]] (``coordinate`` increasing in the index). Collisions, where two
    grid points snap to one index, are filled by splitting the widest remaining gap."""
    size = len(coordinate)
    if count < 1 or count > size:
        raise ConfigError(f"steps must be between 1 and the model's {size} steps, got {count}")
    if count == 1:
        return [size - 1]
    targets = np.linspace(coordinate[0], coordinate[-1], count)
    right = np.clip(np.searchsorted(coordinate, targets), 1, size - 1)
    left = right - 1
    nearer_left = np.abs(targets - coordinate[left]) <= np.abs(coordinate[right] - targets)
    chosen = sorted(set(np.where(nearer_left, left, right).tolist()) | {0, size - 1})
    while len(chosen) < count:
        gaps = [
            (coordinate[b] - coordinate[a], k)
            for k, (a, b) in enumerate(zip(chosen[:-1], chosen[1:], strict=True))
            if b - a > 1
        ]
        _, k = max(gaps)
        a, b = chosen[k], chosen[k + 1]
        middle = 0.5 * (coordinate[a] + coordinate[b])
        inner = np.arange(a + 1, b)
        chosen.insert(k + 1, int(inner[np.argmin(np.abs(coordinate[inner] - middle))]))
    return chosen


def log_snr_timesteps(alphas_cumprod: np.ndarray, count: int) -> list[int]:
    """``count`` trained timesteps (ascending) spread uniformly in λ = ½ log(ᾱ/(1 − ᾱ))."""
    alphas_cumprod = np.asarray(alphas_cumprod, dtype=np.float64)
    half_log_snr = 0.5 * (np.log(alphas_cumprod) - np.log1p(-alphas_cumprod))
    return _snap(-half_log_snr, count)


def karras_timesteps(alphas_cumprod: np.ndarray, count: int, rho: float = KARRAS_RHO) -> list[int]:
    """``count`` trained timesteps (ascending) whose σ̃ = √((1 − ᾱ)/ᾱ) follow Karras et al.'s
    schedule σ̃_i = (σ̃_max^{1/ρ} + i/(K−1) (σ̃_min^{1/ρ} − σ̃_max^{1/ρ}))^ρ (eq. 5)."""
    alphas_cumprod = np.asarray(alphas_cumprod, dtype=np.float64)
    sigma = np.sqrt((1.0 - alphas_cumprod) / alphas_cumprod)
    return _snap(sigma ** (1.0 / rho), count)


def truncated_schedule(schedule: Schedule, last: int | None) -> Schedule:
    """The process stopped at step ``last`` (its first ``last + 1`` β, so ᾱ is unchanged
    there); the schedule itself for ``last`` None or T − 1."""
    if last is None or last == schedule.num_steps - 1:
        return schedule
    if not 0 <= last < schedule.num_steps:
        raise ConfigError(f"the start step must lie in [0, {schedule.num_steps - 1}], got {last}")
    return Schedule(name=f"{schedule.name}[:{last + 1}]", betas=schedule.betas[: last + 1].clone())


def _check_timesteps(timesteps, num_steps: int) -> None:
    """A non-empty increasing list of steps of a ``num_steps``-step process."""
    steps = list(timesteps)
    if not steps or any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
        raise ConfigError("a time grid needs a non-empty increasing list of timesteps")
    if steps[0] < 0 or steps[-1] >= num_steps:
        raise ConfigError(f"timesteps must lie in [0, {num_steps - 1}]")


def respaced_schedule(schedule: Schedule, timesteps: list[int]) -> Schedule:
    """The process over the increasing subset ``timesteps`` of ``schedule``'s steps, with
    β'_i = 1 − ᾱ_{s_i}/ᾱ_{s_{i−1}} so that ᾱ' equals ᾱ on the subset (Nichol & Dhariwal 2021,
    §4)."""
    _check_timesteps(timesteps, schedule.num_steps)
    alpha_bar = schedule.alphas_cumprod[torch.tensor(timesteps, dtype=torch.long)]
    prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
    return Schedule(name=f"{schedule.name}[{len(timesteps)}]", betas=1.0 - alpha_bar / prev)


@dataclass(frozen=True)
class TimeGrid:
    """K trained timesteps (ascending) over the process ``base``; see the module docstring."""

    base: Schedule
    timesteps: tuple[int, ...]

    def __post_init__(self) -> None:
        _check_timesteps(self.timesteps, self.base.num_steps)

    # ------------------------------------------------------------------ construction
    @classmethod
    def spaced(cls, schedule: Schedule, count: int, last: int | None = None) -> TimeGrid:
        """``count`` timesteps evenly spread over [0, last] (default T − 1), both ends kept."""
        base = truncated_schedule(schedule, last)
        return cls(base, tuple(spaced_timesteps(base.num_steps, count)))

    @classmethod
    def log_snr(cls, schedule: Schedule, count: int, last: int | None = None) -> TimeGrid:
        """``count`` timesteps uniform in half the log-SNR λ over [0, last]."""
        base = truncated_schedule(schedule, last)
        return cls(base, tuple(log_snr_timesteps(base.alphas_cumprod, count)))

    @classmethod
    def karras(cls, schedule: Schedule, count: int, last: int | None = None) -> TimeGrid:
        """``count`` timesteps on Karras et al.'s ρ = 7 schedule of σ̃ over [0, last]."""
        base = truncated_schedule(schedule, last)
        return cls(base, tuple(karras_timesteps(base.alphas_cumprod, count)))

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return len(self.timesteps)

    @property
    def every_step(self) -> bool:
        """Whether the grid holds every step of ``base`` (no respacing)."""
        return len(self.timesteps) == self.base.num_steps

    @cached_property
    def process(self) -> Schedule:
        """The respaced process over the grid (``base`` itself when it holds every step)."""
        if self.every_step:
            return self.base
        return respaced_schedule(self.base, list(self.timesteps))

    @cached_property
    def tables(self) -> ScheduleTables:
        """The respaced process's coefficients, indexed by the grid position k."""
        return ScheduleTables(self.process)

    @cached_property
    def _base_alphas_cumprod(self) -> torch.Tensor:
        return self.base.alphas_cumprod

    def alpha_sigma(self, k: int) -> tuple[float, float]:
        """(α, σ) = (√ᾱ, √(1 − ᾱ)) of the trained process at the grid's k-th timestep."""
        alpha_bar = float(self._base_alphas_cumprod[self.timesteps[k]])
        return float(np.sqrt(alpha_bar)), float(np.sqrt(1.0 - alpha_bar))
