"""RunDir: the only code that reads or writes the files of a run directory.

Layout::

    config.json                    the full resolved RunConfig
    metrics.jsonl                  one JSON line per log interval
    eval.json, eval.md             `ddpm eval`;  nll.json: `ddpm nll`
    classes.json                   class names of a class-conditional run
    samples/step_NNNNNN.png        sample grids
    checkpoints/step_NNNNNNN/      one immutable directory per checkpoint:
        model.safetensors, ema.safetensors, optimizer.safetensors, train_state.safetensors,
        state.json (step, time, RNG metadata), manifest.json (SHA-256 and size of every file)
    checkpoints/latest             the name of the newest complete checkpoint

A checkpoint is written into ``checkpoints/.tmp-…``, every file fsynced, the manifest last, then
the directory is renamed into place and ``latest`` replaced atomically; older checkpoints beyond
``keep`` are deleted only after that. Loading verifies every hash: a corrupt or incomplete
``latest`` falls back to the newest good checkpoint, with a warning naming both. No pickle is
read or written anywhere.

Run directories of ddpmkit 0.1 (weights and state.json at the top level) still load: see
:mod:`ddpmkit.legacy`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes

from ddpmkit.config import RunConfig, completed_saved_config, config_from_dict
from ddpmkit.errors import CorruptFileError, RunDirError
from ddpmkit.fileio import atomic_write_text, load_tensors

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.json"
NLL_FILE = "nll.json"
CLASSES_FILE = "classes.json"  # class names of a class-conditional run
SAMPLES_DIR = "samples"
TENSORBOARD_DIR = "tensorboard"
MLRUNS_DIR = "mlruns"
TRAINING_PLOT = "training.png"
QUALITY_PLOT = "quality_vs_nfe.png"
GUIDANCE_PLOT = "guidance_tradeoff.png"
CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "latest"
MANIFEST_FILE = "manifest.json"
STATE_FILE = "state.json"
CHECKPOINT_FORMAT = 2  # 1 was the flat layout of ddpmkit 0.1

_STEP_DIR = re.compile(r"^step_(\d{7,})$")
_GRID = re.compile(r"^step_(\d+)\.png$")


class CheckpointWriteError(RunDirError):
    """A checkpoint could not be written (disk full, no permission, ...)."""


class NonFiniteStateError(RunDirError):
    """A tensor about to be saved holds NaN or Inf."""


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


@dataclass
class Checkpoint:
    """One loaded checkpoint: tensors per file (``model``, ``ema``, ``optimizer``,
    ``train_state``), the safetensors metadata per file, and ``state.json``."""

    step: int
    path: Path
    state: dict[str, Any]
    tensors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    metadata: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def elapsed_s(self) -> float:
        return float(self.state.get("elapsed_s", 0.0))


def _check_finite(groups: dict[str, dict[str, torch.Tensor]]) -> None:
    for group, tensors in groups.items():
        for name, tensor in tensors.items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise NonFiniteStateError(
                    f"refusing to save a checkpoint: {group}/{name} holds NaN or Inf"
                )


def _write_synced(path: Path, data: bytes) -> dict[str, Any]:
    """Write, flush and fsync ``data``; returns its manifest entry."""
    with open(path, "xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some file systems cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _disk_error_text(err: OSError) -> str:
    reason = err.strerror or str(err)
    if err.errno == errno.ENOSPC:
        return f"{reason} (free some space)"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{reason} (the run directory is not writable)"
    return reason


class RunDir:
    """A run directory on disk. Every file of a run is read and written through this class."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir('{self.path}')"

    # ------------------------------------------------------------------ paths
    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def eval_path(self) -> Path:
        return self.path / EVAL_FILE

    @property
    def nll_path(self) -> Path:
        return self.path / NLL_FILE

    @property
    def samples_dir(self) -> Path:
        return self.path / SAMPLES_DIR

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / TENSORBOARD_DIR

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    def grid_path(self, step: int) -> Path:
        return self.samples_dir / f"step_{step:06d}.png"

    def sample_path(self, name: str) -> Path:
        """``samples/NAME.png``: where ``ddpm sample``, ``inpaint`` and ``edit`` write a grid
        when no ``--out`` is given."""
        return self.samples_dir / f"{name}.png"

    def report_path(self, name: str) -> Path:
        """A report or figure at the top of the run: ``eval.md``, ``training.png``,
        ``quality_vs_nfe.png``, ``guidance_tradeoff.png``."""
        return self.path / name

    @property
    def mlflow_dir(self) -> Path:
        """The MLflow file store of ``train.tracker=mlflow`` without a tracking URI."""
        return self.path / MLRUNS_DIR

    def grids(self) -> list[Path]:
        """The sample grids of training, oldest first."""
        if not self.samples_dir.is_dir():
            return []
        grids = [
            (int(m.group(1)), p) for p in self.samples_dir.iterdir() if (m := _GRID.match(p.name))
        ]
        return [p for _, p in sorted(grids)]

    # ------------------------------------------------------------------ config
    def require(self) -> RunDir:
        """Raise a one-line RunDirError unless this is a run directory (it has config.json)."""
        if not self.path.is_dir():
            if self.path.exists():
                raise RunDirError(f"'{self.path}' is a file, not a run directory")
            raise RunDirError(f"run directory '{self.path}' not found")
        if not self.config_path.is_file():
            raise RunDirError(f"'{self.path}' is not a run directory: it has no {CONFIG_FILE}")
        return self

    def has_config(self) -> bool:
        return self.config_path.is_file()

    def write_config(self, config: RunConfig) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config_path, config.to_json())

    def read_config_dict(self) -> dict[str, Any]:
        self.require()
        data = self.read_json(CONFIG_FILE)
        if not isinstance(data, dict):
            raise RunDirError(f"{self.config_path} does not hold a config object")
        return completed_saved_config(data)  # a run saved before a field existed keeps its past

    def read_config(self) -> RunConfig:
        return config_from_dict(self.read_config_dict())

    # ------------------------------------------------------------------ JSON files
    def read_json(self, name: str) -> Any | None:
        """The JSON document ``name`` of the run (None when absent); one error policy for all."""
        path = self.path / name
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RunDirError(f"{path} is not valid JSON: {err}") from None

    def write_json(self, name: str, data: Any) -> Path:
        path = self.path / name
        atomic_write_text(path, json.dumps(data, indent=2) + "\n")
        return path

    def write_text(self, name: str, text: str) -> Path:
        path = self.path / name
        atomic_write_text(path, text)
        return path

    # ------------------------------------------------------------------ metrics
    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one JSON line (flushed) to metrics.jsonl."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()

    def read_metrics(self) -> list[dict[str, Any]]:
        """The records of metrics.jsonl ([] without one). A last line cut short by a crash is
        skipped; an unreadable line before it is a RunDirError."""
        if not self.metrics_path.is_file():
            return []
        text = self.metrics_path.read_text(encoding="utf-8", errors="replace")
        lines = [line for line in text.splitlines() if line.strip()]
        records = []
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines):  # the line being written when the run stopped
                    break
                raise RunDirError(
                    f"{self.metrics_path}, line {number}, is not valid JSON"
                ) from None
            if isinstance(record, dict):
                records.append(record)
        return records

    def truncate_metrics(self, step: int) -> None:
        """Drop the metric lines logged after ``step`` (those of steps that a resume redoes)."""
        if not self.metrics_path.is_file():
            return
        kept = [r for r in self.read_metrics() if _int_or(r.get("step"), step + 1) <= step]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_steps(self) -> list[int]:
        """Steps of the checkpoint directories that have a manifest (complete ones), sorted."""
        folder = self.checkpoints_dir
        if not folder.is_dir():
            return []
        steps = []
        for entry in folder.iterdir():
            match = _STEP_DIR.match(entry.name)
            if match and (entry / MANIFEST_FILE).is_file():
                steps.append(int(match.group(1)))
        return sorted(steps)

    def checkpoint_path(self, step: int) -> Path:
        return self.checkpoints_dir / step_dir_name(step)

    def latest_step(self) -> int | None:
        """The step named by ``checkpoints/latest`` (None if it is missing or unreadable)."""
        pointer = self.checkpoints_dir / LATEST_FILE
        try:
            match = _STEP_DIR.match(pointer.read_text(encoding="utf-8").strip())
        except (OSError, UnicodeDecodeError):
            return None
        return int(match.group(1)) if match else None

    def has_checkpoint(self) -> bool:
        from ddpmkit import legacy

        return bool(self.checkpoint_steps()) or legacy.has_flat_checkpoint(self.path)

    def save_checkpoint(
        self,
        step: int,
        tensors: dict[str, dict[str, torch.Tensor]],
        metadata: dict[str, dict[str, str]],
        state: dict[str, Any],
        keep: int = 3,
    ) -> Path:
        """Write checkpoint ``step`` whole or not at all, point ``latest`` at it, then delete
        all but the ``keep`` newest. ``tensors`` maps a file stem to its tensors."""
        _check_finite(tensors)
        folder = self.checkpoints_dir
        final = self.checkpoint_path(step)
        tmp = folder / f".tmp-{step_dir_name(step)}-{uuid.uuid4().hex[:8]}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()
            manifest: dict[str, Any] = {"format": CHECKPOINT_FORMAT, "step": step, "files": {}}
            for stem, group in tensors.items():
                cpu = {k: v.detach().contiguous().cpu() for k, v in group.items()}
                data = safetensors_bytes(cpu, metadata=metadata.get(stem) or None)
                name = f"{stem}.safetensors"
                manifest["files"][name] = _write_synced(tmp / name, data)
            state_bytes = (json.dumps({**state, "step": step}, indent=2) + "\n").encode()
            manifest["files"][STATE_FILE] = _write_synced(tmp / STATE_FILE, state_bytes)
            _write_synced(tmp / MANIFEST_FILE, (json.dumps(manifest, indent=2) + "\n").encode())
            _fsync_dir(tmp)
            if final.exists():  # the same step saved again (a resume redid it): swap it out
                old = folder / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
            _fsync_dir(folder)
            atomic_write_text(folder / LATEST_FILE, final.name + "\n")
        except OSError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            kept = [s for s in self.checkpoint_steps() if s != step]
            earlier = f"step {kept[-1]}" if kept else "none"
            raise CheckpointWriteError(
                f"cannot write the checkpoint of step {step} in {folder}: "
                f"{_disk_error_text(err)}; the earlier checkpoints are intact (newest: {earlier})"
            ) from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._prune(keep, step)
        return final

    def _prune(self, keep: int, newest: int) -> None:
        """Delete leftovers of interrupted writes and all but the ``keep`` newest checkpoints."""
        folder = self.checkpoints_dir
        for entry in folder.iterdir():
            stale_tmp = entry.name.startswith((".tmp-", ".old-"))
            incomplete = _STEP_DIR.match(entry.name) and not (entry / MANIFEST_FILE).exists()
            if entry.is_dir() and (stale_tmp or incomplete):
                shutil.rmtree(entry, ignore_errors=True)
        if keep < 1:
            return
        steps = [s for s in self.checkpoint_steps() if s != newest]
        for step in steps[: max(0, len(steps) - (keep - 1))]:
            shutil.rmtree(self.checkpoint_path(step), ignore_errors=True)

    def load_checkpoint(
        self, step: int | None = None, files: tuple[str, ...] | None = None
    ) -> Checkpoint:
        """Checkpoint ``step`` (default: ``latest``), its hashes verified; ``files`` limits the
        tensor files read (e.g. ``("ema",)``). Without ``step``, a corrupt or incomplete latest
        falls back to the newest good checkpoint with a warning naming both."""
        from ddpmkit import legacy

        self.require()
        steps = self.checkpoint_steps()
        if not steps:
            if legacy.has_flat_checkpoint(self.path):
                if step is not None and step != legacy.flat_step(self.path):
                    raise RunDirError(f"'{self.path}' has only the checkpoint of its last step")
                return legacy.load_flat_checkpoint(self.path, files)
            raise RunDirError(f"'{self.path}' has no checkpoint yet: train it first")
        if step is not None:
            if step not in steps:
                listed = ", ".join(str(s) for s in steps)
                raise RunDirError(
                    f"'{self.path}' has no checkpoint of step {step} (it has {listed})"
                )
            return self._read_checkpoint(step, files)
        latest = self.latest_step()
        if latest not in steps:
            if latest is not None:
                warnings.warn(
                    f"checkpoints/latest names step {latest}, whose checkpoint is missing or "
                    f"incomplete; using the checkpoint of step {steps[-1]} instead",
                    stacklevel=2,
                )
            latest = steps[-1]
        candidates = [latest] + [s for s in reversed(steps) if s != latest]
        failures: list[str] = []
        for candidate in candidates:
            try:
                checkpoint = self._read_checkpoint(candidate, files)
            except CorruptFileError as err:
                failures.append(str(err))
                continue
            if failures:
                warnings.warn(
                    f"checkpoint of step {latest} is unusable ({failures[0]}); "
                    f"using the checkpoint of step {candidate} instead",
                    stacklevel=2,
                )
            return checkpoint
        raise RunDirError(f"no usable checkpoint in '{self.path}': {failures[0]}")

    def _read_checkpoint(self, step: int, files: tuple[str, ...] | None) -> Checkpoint:
        folder = self.checkpoint_path(step)
        manifest_path = folder / MANIFEST_FILE
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            entries = manifest["files"]
            if not isinstance(entries, dict) or manifest.get("step") != step:
                raise ValueError("it does not describe this checkpoint")
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CorruptFileError(f"{manifest_path} is unreadable: {err}") from None
        try:
            state = json.loads(self._verified(folder, STATE_FILE, entries).read_text("utf-8"))
        except (OSError, ValueError) as err:  # hashes match a tampered manifest: still one line
            raise CorruptFileError(f"{folder / STATE_FILE} is unreadable: {err}") from None
        if not isinstance(state, dict) or state.get("step") != step:
            raise CorruptFileError(f"{folder / STATE_FILE} does not belong to step {step}")
        checkpoint = Checkpoint(step=step, path=folder, state=state)
        stems = [n.removesuffix(".safetensors") for n in entries if n.endswith(".safetensors")]
        for stem in stems:
            if files is not None and stem not in files:
                continue
            tensors, meta = load_tensors(self._verified(folder, f"{stem}.safetensors", entries))
            checkpoint.tensors[stem] = tensors
            checkpoint.metadata[stem] = meta
        missing = [f for f in files or () if f not in checkpoint.tensors]
        if missing:
            raise CorruptFileError(f"{folder} has no {missing[0]}.safetensors")
        return checkpoint

    @staticmethod
    def _verified(folder: Path, name: str, entries: dict[str, Any]) -> Path:
        """``folder/name`` once its size and SHA-256 match the manifest (hashed in chunks, so a
        large checkpoint is not held in memory twice: it is read for hashing, then loaded)."""
        path = folder / name
        entry = entries.get(name)
        if not isinstance(entry, dict):
            raise CorruptFileError(f"{folder / MANIFEST_FILE} does not list {name}")
        try:
            size = path.stat().st_size
            with open(path, "rb") as handle:
                digest = hashlib.file_digest(handle, "sha256").hexdigest()
        except OSError as err:
            raise CorruptFileError(f"{path} is unreadable: {err.strerror or err}") from None
        if size != entry.get("bytes") or digest != entry.get("sha256"):
            raise CorruptFileError(f"{path} does not match its SHA-256 in the manifest")
        return path


def _int_or(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default
