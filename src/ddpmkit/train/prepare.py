"""The config and run directory of ``ddpm train``."""

from __future__ import annotations

import re
import time
from pathlib import Path

from ddpmkit.config import RunConfig, resolve_config
from ddpmkit.errors import ConfigError
from ddpmkit.rundir import RunDir


def prepare_run(
    config_file: str | None = None,
    overrides: list[str] = (),
    data: str | None = None,
    out: str | Path | None = None,
    resume: str | Path | None = None,
) -> tuple[RunConfig, Path]:
    """The config and run directory of ``ddpm train``: defaults → ``config_file`` →
    ``overrides`` (``data`` is ``data.source``); ``resume`` continues a run in place from its
    saved config; without ``out`` a new ``runs/<data>-<date>-<time>``."""
    overrides = [*overrides, *([f"data.source={data}"] if data is not None else [])]
    if resume:
        if out and Path(out) != Path(resume):
            raise ConfigError("--resume continues RUN_DIR in place: drop --out")
        base = RunDir(resume).read_config_dict()
        return resolve_config(config_file, overrides, base=base), Path(resume)
    config = resolve_config(config_file, overrides)
    if out:
        return config, Path(out)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(config.data.source).stem).strip("_")
    return config, Path("runs") / f"{stem or 'run'}-{time.strftime('%Y%m%d-%H%M%S')}"
