"""One config object describes a run: data, model, diffusion, training and sampling.

What lives here: the run's dataclasses, each section in its own light module (``data.py``,
``model.py``, ``diffusion.py``; ``run.py`` holds training, sampling, :class:`RunConfig` and the
TOML / ``key=value`` / ``config.json`` reading), and the names each value is checked against.
It imports nothing but :mod:`ddpmkit.errors`: no torch, no data source, sampler or network, so
the run directory's code can read a config without loading them.

Configs come from TOML files (``configs/*.toml``), from ``section.key=value`` overrides on the
command line (a bare ``key=value`` works where the key names one field only), and from the
``config.json`` saved in every run directory. Every value is checked against its field's type;
every mistake (unreadable file, invalid TOML/JSON or UTF-8, unknown key, wrong type, huge or
non-finite number) is one :class:`ConfigError` of one line.
"""

from __future__ import annotations

from ddpmkit.config.data import DataConfig
from ddpmkit.config.diffusion import DiffusionConfig
from ddpmkit.config.model import UNetConfig
from ddpmkit.config.run import (
    AMP_DTYPES,
    LR_SCHEDULES,
    MAX_CONFIG_BYTES,
    SECTIONS,
    TIMESTEP_SAMPLERS,
    TRACKERS,
    RunConfig,
    SampleConfig,
    TrainConfig,
    apply_overrides,
    completed_saved_config,
    config_from_dict,
    load_config_file,
    resolve_config,
)

__all__ = [
    "AMP_DTYPES",
    "LR_SCHEDULES",
    "MAX_CONFIG_BYTES",
    "SECTIONS",
    "TIMESTEP_SAMPLERS",
    "TRACKERS",
    "DataConfig",
    "DiffusionConfig",
    "RunConfig",
    "SampleConfig",
    "TrainConfig",
    "UNetConfig",
    "apply_overrides",
    "completed_saved_config",
    "config_from_dict",
    "load_config_file",
    "resolve_config",
]
