"""Sampling: integrators over one Denoiser on an explicit time grid.

What lives here: the :class:`~ddpmkit.sampling.denoiser.Denoiser` interface and its wrappers
(``denoiser.py``), time grids (``grid.py``), one module per integrator — ancestral (DDPM), DDIM,
DPM-Solver++(2M), Heun, RePaint — each a function ``fn(denoiser, x, grid, *, noise, callback,
**options) -> x``, and this table of named samplers with :func:`integrate`, which runs one.
It may import the diffusion, schedules and seeding; never a network, data or run files.

Adding a sampler is one function and one :class:`Sampler` value (see README, Library)::

    euler = Sampler("euler", my_euler, TimeGrid.karras, default_steps=30)
    generate(model, diffusion, shape, SampleRequest(sampler=euler), device)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from ddpmkit.diffusion import GaussianDiffusion, Model, normal_like
from ddpmkit.errors import ConfigError
from ddpmkit.sampling.ancestral import ancestral, ancestral_step
from ddpmkit.sampling.ddim import ddim
from ddpmkit.sampling.denoiser import ClippedDenoiser, Denoiser, as_denoiser
from ddpmkit.sampling.dpm_solver import dpm_solver_pp_2m
from ddpmkit.sampling.grid import TimeGrid
from ddpmkit.sampling.heun import heun
from ddpmkit.sampling.repaint import repaint
from ddpmkit.sampling.step import Callback, Integrator, SamplerStep
from ddpmkit.schedules import Schedule
from ddpmkit.seeding import NoiseGenerator

GridMaker = Callable[[Schedule, int, "int | None"], TimeGrid]  # (schedule, count, last)

__all__ = [
    "SAMPLERS",
    "Callback",
    "Sampler",
    "SamplerStep",
    "TimeGrid",
    "ancestral",
    "ancestral_step",
    "ddim",
    "dpm_solver_pp_2m",
    "get_sampler",
    "heun",
    "initial_noise",
    "integrate",
    "repaint",
    "sample",
]


def _one_call_per_step(steps: int) -> int:
    return steps


def _heun_calls(steps: int) -> int:
    """Heun's 2nd-order correction costs a second call on every step but the last (to σ = 0)."""
    return 2 * steps - 1


@dataclass(frozen=True)
class Sampler:
    """A named integrator with its default grid and step count, and what it costs."""

    name: str
    integrator: Integrator
    grid: GridMaker
    default_steps: int | None = None  # None: every trained step
    calls: Callable[[int], int] = _one_call_per_step  # network calls (NFE) of K steps
    options: tuple[str, ...] = ()  # keyword options it takes besides the grid (e.g. eta)

    def steps_for(self, num_steps: int) -> int:
        """The number of steps taken when none is asked for (capped at the process's T)."""
        return num_steps if self.default_steps is None else min(self.default_steps, num_steps)

    def check(self, **options: float) -> None:
        """Refuse options it does not take, and non-finite or negative values."""
        for name, value in options.items():
            if not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {value}")
            if value < 0:
                raise ConfigError(f"{name} must be >= 0, got {value}")
            if value and name not in self.options:
                takers = [s.name for s in SAMPLERS.values() if name in s.options]
                raise ConfigError(
                    f"{name} applies to {', '.join(takers)} only; {self.name} does not take it"
                )


SAMPLERS: dict[str, Sampler] = {
    "ddpm": Sampler("ddpm", ancestral, TimeGrid.spaced),
    "ddim": Sampler("ddim", ddim, TimeGrid.spaced, 50, options=("eta",)),
    "dpm++": Sampler("dpm++", dpm_solver_pp_2m, TimeGrid.log_snr, 20),
    "heun": Sampler("heun", heun, TimeGrid.karras, 18, calls=_heun_calls, options=("churn",)),
}


def get_sampler(sampler: str | Sampler) -> Sampler:
    """The :class:`Sampler` of a name in :data:`SAMPLERS`, or ``sampler`` itself."""
    if isinstance(sampler, Sampler):
        return sampler
    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler '{sampler}': choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[sampler]


def make_grid(
    sampler: str | Sampler, schedule: Schedule, steps: int | None, last: int | None = None
) -> TimeGrid:
    """The grid ``sampler`` runs on: ``steps`` (default: its own) over [0, last]."""
    spec = get_sampler(sampler)
    size = schedule.num_steps if last is None else last + 1
    return spec.grid(schedule, spec.steps_for(size) if steps is None else steps, last)


def initial_noise(
    shape: Sequence[int],
    generator: NoiseGenerator | None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """x_T ~ N(0, I) from ``generator`` (row by row for a per-sample generator)."""
    device = torch.device("cpu" if device is None else device)
    return normal_like(shape, generator, torch.empty((), device=device, dtype=dtype))


def integrate(
    denoiser: Denoiser,
    x: torch.Tensor,
    sampler: str | Sampler,
    grid: TimeGrid,
    *,
    noise: NoiseGenerator | None = None,
    callback: Callback | None = None,
    clip_x0: bool = True,
    progress: bool = False,
    **options: Any,
) -> torch.Tensor:
    """Run ``sampler``'s integrator from x (at the grid's last timestep) to x_0 without
    gradients, x̂_0 clipped to [−1, 1] if asked, with a progress bar if asked."""
    spec = get_sampler(sampler)
    if clip_x0:
        denoiser = ClippedDenoiser(denoiser)
    bar = tqdm(total=None, desc=f"{spec.name} sampling", disable=not progress, leave=False)

    def report(step: SamplerStep) -> None:
        bar.total = step.total
        bar.update(1)
        if callback is not None:
            callback(step)

    with torch.no_grad():
        try:
            return spec.integrator(denoiser, x, grid, noise=noise, callback=report, **options)
        finally:
            bar.close()


def sample(
    model: Model | Denoiser,
    diffusion: GaussianDiffusion,
    shape: Sequence[int],
    sampler: str | Sampler = "ddpm",
    steps: int | None = None,
    eta: float = 0.0,
    clip_x0: bool = True,
    generator: NoiseGenerator | None = None,
    callback: Callback | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    x_T: torch.Tensor | None = None,
    progress: bool = False,
    start_t: int | None = None,
) -> torch.Tensor:
    """Draw ``shape[0]`` samples with a sampler of :data:`SAMPLERS` (or any :class:`Sampler`).

    ``ddpm``: ancestral sampling (Ho et al., Algorithm 2) over all T steps or, with ``steps=K``,
    the respaced process over K evenly spread steps. ``ddim``: DDIM over ``steps`` (default 50)
    with stochasticity ``eta``. ``dpm++``: DPM-Solver++(2M) in ``steps`` calls (default 20).
    ``heun``: Heun's method on Karras et al.'s σ grid, ``steps`` steps (default 18) costing
    2·steps − 1 calls. ``generator``: a :class:`torch.Generator` or a per-sample generator.
    ``x_T`` overrides the initial noise; ``start_t`` starts from x_{start_t} (given as ``x_T``)
    on the process truncated there (SDEdit). Returns x_0 in the data scale.
    """
    spec = get_sampler(sampler)
    spec.check(eta=eta)
    if start_t is not None:
        if x_T is None:
            raise ConfigError("start_t needs the x_t to start from, given as x_T")
        if not 0 <= start_t < diffusion.num_steps:
            raise ConfigError(f"start_t must lie in [0, {diffusion.num_steps - 1}], got {start_t}")
    grid = make_grid(spec, diffusion.schedule, steps, start_t)
    if x_T is None:
        x = initial_noise(shape, generator, device, dtype)
    else:
        x = x_T.to(device=x_T.device if device is None else torch.device(device), dtype=dtype)
    options = {"eta": eta} if eta else {}
    return integrate(
        as_denoiser(model, diffusion),
        x,
        spec,
        grid,
        noise=generator,
        callback=callback,
        clip_x0=clip_x0,
        progress=progress,
        **options,
    )
