"""Run directories and trained runs.

What lives here: reading a trained run back (``loaded.py``: :func:`load_run`, the device, the
one place a run's denoiser is built) and what a run is asked to condition on
(``conditioning.py``). The run directory's file layout is owned by :class:`ddpmkit.rundir.RunDir`
and written through :mod:`ddpmkit.fileio`. This package may import the config, the diffusion,
the sampling denoiser and the network; nothing imports it from below (schedules, diffusion,
sampling, nn, data).
"""
