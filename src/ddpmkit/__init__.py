"""ddpmkit: denoising diffusion probabilistic models on PyTorch.

Importing the package loads nothing but its version; the short names below are imported on
first use (PEP 562), so ``from ddpmkit import GaussianDiffusion, sample`` works without
``import ddpmkit`` paying for the U-Net, the data sources or the command line.

Top-level packages and what each may import (lower rows never import higher ones):

- ``cli/``: the ``ddpm`` command; imports anything, imported by nothing.
- ``training.py``, ``evaluate.py``, ``fid.py``, ``nll.py``, ``edit.py``, ``generate.py``,
  ``compare.py``, ``interop/``: library entry points of the commands.
- ``run/``, ``rundir.py``: trained runs and the run directory's files.
- ``sampling/``: Denoiser, time grids, integrators; imports the diffusion, never a network.
- ``nn/``: the U-Net; knows nothing of diffusion. ``data/``: sources, cache, loader.
- ``diffusion.py``, ``schedules.py``, ``likelihood.py``, ``config.py``, ``errors.py``: the core.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SHORT_NAMES = {
    "GaussianDiffusion": "ddpmkit.diffusion",
    "DiffusionConfig": "ddpmkit.diffusion",
    "make_schedule": "ddpmkit.schedules",
    "UNet": "ddpmkit.nn",
    "UNetConfig": "ddpmkit.nn",
    "sample": "ddpmkit.sampling",
    "Sampler": "ddpmkit.sampling",
    "SAMPLERS": "ddpmkit.sampling",
    "TimeGrid": "ddpmkit.sampling",
    "generate": "ddpmkit.generate",
    "SampleRequest": "ddpmkit.generate",
    "load_run": "ddpmkit.run.loaded",
}

__all__ = ["__version__", *_SHORT_NAMES]


def __getattr__(name: str) -> Any:
    if name in _SHORT_NAMES:
        return getattr(importlib.import_module(_SHORT_NAMES[name]), name)
    raise AttributeError(f"module 'ddpmkit' has no attribute {name!r}")
