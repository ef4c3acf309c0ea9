"""Compatibility: the sampling entry points now live in :mod:`ddpmkit.sampling`.

``from ddpmkit.samplers import sample`` keeps working; new code imports from
``ddpmkit.sampling`` (or ``from ddpmkit import sample``).
"""

from __future__ import annotations

from ddpmkit.sampling import (
    SAMPLERS,
    Callback,
    Sampler,
    SamplerStep,
    ancestral_step,
    get_sampler,
    sample,
)

__all__ = [
    "SAMPLERS",
    "Callback",
    "Sampler",
    "SamplerStep",
    "ancestral_step",
    "check_sampler",
    "default_steps",
    "function_evaluations",
    "sample",
]


def default_steps(sampler: str, num_steps: int) -> int:
    """The number of steps ``sampler`` takes when none is asked for (capped at T)."""
    return get_sampler(sampler).steps_for(num_steps)


def function_evaluations(sampler: str, steps: int) -> int:
    """Network calls (NFE) of ``steps`` steps of ``sampler``."""
    return get_sampler(sampler).calls(steps)


def check_sampler(sampler: str, eta: float = 0.0) -> None:
    """Raise :class:`~ddpmkit.errors.ConfigError` for an unknown sampler or an ``eta`` it cannot
    use."""
    get_sampler(sampler).check(eta=eta)
