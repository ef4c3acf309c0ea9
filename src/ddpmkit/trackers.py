"""Experiment trackers fed from the one metrics record: TensorBoard, Weights & Biases, MLflow.

``train.tracker = none | tensorboard | wandb | mlflow``. Every metrics.jsonl record becomes
scalars ``train/<key>`` at its step and every sample grid an image. The tracker's package is
imported only when a tracker is made (a one-line ConfigError with the install command when it is
missing), never at ``import ddpmkit``. The wandb run id and the MLflow run id are kept in
``RUN_DIR/trackers.json`` so that ``ddpm train --resume`` continues the same tracked run.
"""

from __future__ import annotations

import importlib
import os
import time
import uuid
from collections.abc import Mapping
from typing import Any, Protocol

import torch

from ddpmkit.config import TRACKERS
from ddpmkit.errors import ConfigError
from ddpmkit.rundir import RunDir
from ddpmkit.viz import grid_array

TRACKERS_FILE = "trackers.json"
SCALAR_PREFIX = "train/"


class Tracker(Protocol):
    def scalars(self, step: int, values: Mapping[str, Any]) -> None: ...

    def image_grid(self, step: int, tag: str, images: torch.Tensor) -> None: ...

    def close(self) -> None: ...


def numbers(values: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries of a metrics record as ``train/<key>`` (``step`` left out)."""
    return {
        SCALAR_PREFIX + key: float(value)
        for key, value in values.items()
        if key != "step" and not isinstance(value, bool) and isinstance(value, (int, float))
    }


_MODULES = {"tensorboard": "torch.utils.tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
"""The module each tracker imports; its package comes with the extra of the tracker's name."""


def _import(tracker: str) -> Any:
    try:
        return importlib.import_module(_MODULES[tracker])
    except ImportError:
        raise ConfigError(
            f"train.tracker={tracker} needs {tracker}, which is not installed: "
            f"pip install 'ddpmkit[{tracker}]' (or set train.tracker=none)"
        ) from None


def _flat_config(config: Any) -> dict[str, Any]:
    flat = {}
    for section, values in config.to_dict().items():
        for key, value in values.items():
            flat[f"{section}.{key}"] = value
    return flat


class TensorBoardTracker:
    """Event files in ``RUN_DIR/tensorboard``, opened on the first write. ``purge_step``: on
    resume, events at or after this step left by the interrupted run are hidden by TensorBoard
    (as metrics.jsonl drops them)."""

    def __init__(self, run: RunDir, purge_step: int | None = None) -> None:
        module = _import("tensorboard")
        self._writer_class = module.SummaryWriter
        self.log_dir = run.tensorboard_dir
        self.purge_step = purge_step
        self._writer: Any = None

    @property
    def writer(self) -> Any:
        if self._writer is None:
            self._writer = self._writer_class(str(self.log_dir), purge_step=self.purge_step)
        return self._writer

    def scalars(self, step: int, values: Mapping[str, Any]) -> None:
        for key, value in numbers(values).items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def image_grid(self, step: int, tag: str, images: torch.Tensor) -> None:
        """A (N, C, H, W) batch in [-1, 1] as one grid image (as :func:`viz.save_grid`)."""
        self.writer.add_image(tag, grid_array(images.detach().cpu()), step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class WandbTracker:
    """A Weights & Biases run named after the run directory, project ``train.tracker_project``;
    its id is kept in trackers.json and reused with ``resume="allow"``. wandb only accepts
    increasing steps: after a resume from an earlier checkpoint, the steps it redoes are logged
    to metrics.jsonl again but wandb keeps the first values. Offline use: WANDB_MODE=offline."""

    def __init__(self, run: RunDir, config: Any) -> None:
        self._wandb = _import("wandb")
        ids = run.read_json(TRACKERS_FILE) or {}
        run_id = ids.get("wandb") or uuid.uuid4().hex[:12]
        run.write_json(TRACKERS_FILE, {**ids, "wandb": run_id})
        self.run_id = run_id
        self._run = self._wandb.init(
            project=config.train.tracker_project,
            name=run.path.resolve().name,
            id=run_id,
            resume="allow",
            dir=str(run.path),
            config=_flat_config(config),
        )

    def scalars(self, step: int, values: Mapping[str, Any]) -> None:
        self._run.log(numbers(values), step=step)

    def image_grid(self, step: int, tag: str, images: torch.Tensor) -> None:
        self._run.log({tag: self._wandb.Image(grid_array(images.detach().cpu()))}, step=step)

    def close(self) -> None:
        self._run.finish()


class MlflowTracker:
    """An MLflow run in experiment ``train.tracker_project`` at ``train.tracker_uri`` (default:
    the ``MLFLOW_TRACKING_URI`` environment variable, else a file store in ``RUN_DIR/mlruns``,
    for which MLFLOW_ALLOW_FILE_STORE is set); its id is kept in trackers.json and the run is
    reopened on resume. The config is logged as parameters, grids as artifacts."""

    def __init__(self, run: RunDir, config: Any) -> None:
        mlflow = _import("mlflow")
        uri = config.train.tracker_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            uri = run.mlflow_dir.resolve().as_uri()
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self._entities = mlflow.entities
        self._client = mlflow.MlflowClient(tracking_uri=uri)
        ids = run.read_json(TRACKERS_FILE) or {}
        run_id = ids.get("mlflow")
        if run_id is None:
            name = config.train.tracker_project
            experiment = self._client.get_experiment_by_name(name)
            experiment_id = (
                experiment.experiment_id if experiment else self._client.create_experiment(name)
            )
            created = self._client.create_run(experiment_id, run_name=run.path.resolve().name)
            run_id = created.info.run_id
            run.write_json(TRACKERS_FILE, {**ids, "mlflow": run_id})
            params = [
                self._entities.Param(key, str(value)[:500])
                for key, value in _flat_config(config).items()
            ]
            self._client.log_batch(run_id, params=params)
        else:
            self._client.update_run(run_id, status="RUNNING")
        self.run_id = run_id
        self.tracking_uri = uri

    def scalars(self, step: int, values: Mapping[str, Any]) -> None:
        timestamp = int(time.time() * 1000)
        metrics = [
            self._entities.Metric(key, value, timestamp, step)
            for key, value in numbers(values).items()
        ]
        self._client.log_batch(self.run_id, metrics=metrics)

    def image_grid(self, step: int, tag: str, images: torch.Tensor) -> None:
        grid = grid_array(images.detach().cpu())
        self._client.log_image(self.run_id, grid, artifact_file=f"{tag}/step_{step:06d}.png")

    def close(self) -> None:
        self._client.set_terminated(self.run_id)


def make_tracker(name: str, run: RunDir, config: Any, start_step: int) -> Tracker | None:
    """The tracker ``name`` for ``run`` (None for ``none``)."""
    if name == "none":
        return None
    if name == "tensorboard":
        return TensorBoardTracker(run, purge_step=start_step + 1)
    if name == "wandb":
        return WandbTracker(run, config)
    if name == "mlflow":
        return MlflowTracker(run, config)
    raise ConfigError(f"unknown train.tracker '{name}': use one of {', '.join(TRACKERS)}")


def check_installed(name: str) -> None:
    """Raise the install hint now if the tracker's package is missing (every DDP rank calls
    this; only rank 0 makes the tracker)."""
    if name in _MODULES:
        _import(name)
