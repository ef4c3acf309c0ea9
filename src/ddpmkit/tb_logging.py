"""Optional TensorBoard logging of training (extra ``ddpmkit[tensorboard]``).

Enabled with ``train.tensorboard=true``: the Trainer's metrics.jsonl records become scalars and
its sample grids images under ``RUN_DIR/tensorboard`` (``tensorboard --logdir RUN_DIR``). The
module imports TensorBoard only when a logger is made, never at import.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ddpmkit.errors import ConfigError
from ddpmkit.viz import grid_array

TENSORBOARD_DIR = "tensorboard"
SCALAR_PREFIX = "train/"


def _summary_writer_class() -> type:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(
            "train.tensorboard=true needs TensorBoard, which is not installed: "
            "pip install 'ddpmkit[tensorboard]' (or set train.tensorboard=false)"
        ) from None
    return SummaryWriter


class TensorBoardLogger:
    """Scalars and image grids for ``run_dir/tensorboard``.

    Making the logger checks that TensorBoard is installed (a :class:`ConfigError` otherwise);
    the event file is opened on the first write, so nothing is created in ``run_dir`` before
    training starts. ``purge_step``: on resume, events at or after this step left by the
    interrupted run are hidden by TensorBoard (as metrics.jsonl drops them)."""

    def __init__(self, run_dir: str | Path, purge_step: int | None = None) -> None:
        self._writer_class = _summary_writer_class()
        self.log_dir = Path(run_dir) / TENSORBOARD_DIR
        self.purge_step = purge_step
        self._writer: Any = None

    @property
    def writer(self) -> Any:
        """The SummaryWriter, opened on first use."""
        if self._writer is None:
            self._writer = self._writer_class(str(self.log_dir), purge_step=self.purge_step)
        return self._writer

    def scalars(self, step: int, values: Mapping[str, Any]) -> None:
        """Log every number of ``values`` (a metrics.jsonl record) as ``train/<key>``; the
        ``step`` key and non-numbers are skipped."""
        for key, value in values.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            self.writer.add_scalar(SCALAR_PREFIX + key, value, step)
        self.writer.flush()

    def image_grid(self, step: int, tag: str, images: torch.Tensor) -> None:
        """Log a (N, C, H, W) batch in [-1, 1] as one grid image (as :func:`viz.save_grid`)."""
        grid = grid_array(images.detach().cpu())
        self.writer.add_image(tag, grid, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file (a later write opens a new one)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
