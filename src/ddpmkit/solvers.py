"""Compatibility: the ODE solvers live in :mod:`ddpmkit.sampling.dpm_solver` and
:mod:`ddpmkit.sampling.heun`, their grids in :mod:`ddpmkit.sampling.grid`."""

from __future__ import annotations

from ddpmkit.sampling.dpm_solver import dpm_solver_pp_2m
from ddpmkit.sampling.grid import KARRAS_RHO, karras_timesteps, log_snr_timesteps
from ddpmkit.sampling.heun import heun

__all__ = ["KARRAS_RHO", "dpm_solver_pp_2m", "heun", "karras_timesteps", "log_snr_timesteps"]
