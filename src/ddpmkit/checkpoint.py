"""Run directory I/O: the resolved config, weights and optimizer state, written atomically.

A run directory holds::

    config.json          the full resolved RunConfig
    state.json           step, elapsed time, file list (written last: the checkpoint's commit mark)
    model.safetensors    raw weights
    ema.safetensors      exponential moving average of the weights (what samplers use)
    optimizer.safetensors  optimizer moments + the training RNG state; hyper-parameters as metadata
    metrics.jsonl        one JSON line per log interval
    samples/             sample grids

Every file is written to a temporary name, flushed to disk and renamed over the old one, so a
crash leaves either the previous or the new file, never half of one. No pickle is read or written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ddpmkit.config import RunConfig, config_from_dict
from ddpmkit.errors import RunDirError
from ddpmkit.fileio import atomic_save_tensors, atomic_write_text

CONFIG_FILE = "config.json"
STATE_FILE = "state.json"
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.json"  # written by `ddpm eval`
NLL_FILE = "nll.json"  # written by `ddpm nll`
SAMPLES_DIR = "samples"


def _state_dict_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in module.state_dict().items()}


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], str]:
    """Flatten an optimizer state_dict into named tensors plus JSON for everything else."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, param_state in state["state"].items():
        for key, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{param_id}.{key}"] = value
            else:
                scalars.setdefault(str(param_id), {})[key] = value
    meta = {"param_groups": state["param_groups"], "scalars": scalars}
    return tensors, json.dumps(meta)


def optimizer_from_tensors(tensors: dict[str, torch.Tensor], meta_json: str) -> dict[str, Any]:
    """The inverse of :func:`optimizer_to_tensors`: a state_dict for ``load_state_dict``."""
    meta = json.loads(meta_json)
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if not name.startswith("state."):
            continue
        _, param_id, key = name.split(".", 2)
        state.setdefault(int(param_id), {})[key] = value
    for param_id, values in meta["scalars"].items():
        state.setdefault(int(param_id), {}).update(values)
    # JSON turned tuples such as AdamW's betas into lists
    groups = [
        {k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in group.items()}
        for group in meta["param_groups"]
    ]
    return {"state": state, "param_groups": groups}


@dataclass
class TrainingState:
    step: int
    elapsed_s: float


def save_checkpoint(
    run_dir: Path,
    config: RunConfig,
    model: torch.nn.Module,
    ema: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rng_state: torch.Tensor,
    state: TrainingState,
    extra: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write the whole run state; ``state.json`` goes last and names the step of every file.
    ``extra`` tensors (e.g. the importance sampler's loss history) go with the optimizer."""
    step_meta = {"step": str(state.step)}
    atomic_write_text(run_dir / CONFIG_FILE, config.to_json())
    opt_tensors, opt_meta = optimizer_to_tensors(optimizer)
    opt_tensors["rng.train"] = rng_state
    for name, tensor in (extra or {}).items():
        opt_tensors[f"extra.{name}"] = tensor
    atomic_save_tensors(run_dir / OPTIMIZER_FILE, opt_tensors, {**step_meta, "optimizer": opt_meta})
    atomic_save_tensors(run_dir / MODEL_FILE, _state_dict_tensors(model), step_meta)
    atomic_save_tensors(run_dir / EMA_FILE, _state_dict_tensors(ema), step_meta)
    atomic_write_text(
        run_dir / STATE_FILE,
        json.dumps({"step": state.step, "elapsed_s": round(state.elapsed_s, 3)}, indent=2) + "\n",
    )


def require_run_dir(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"run directory '{run_dir}' not found")
    if not (run_dir / CONFIG_FILE).is_file():
        raise RunDirError(f"'{run_dir}' is not a run directory: it has no {CONFIG_FILE}")
    return run_dir


def load_run_config(run_dir: str | Path) -> RunConfig:
    return config_from_dict(load_config_dict(run_dir))


def load_config_dict(run_dir: str | Path) -> dict[str, Any]:
    run_dir = require_run_dir(run_dir)
    try:
        data = json.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise RunDirError(f"{run_dir / CONFIG_FILE} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise RunDirError(f"{run_dir / CONFIG_FILE} does not hold a config object")
    return data


def read_training_state(run_dir: Path) -> TrainingState | None:
    path = run_dir / STATE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return TrainingState(step=int(data["step"]), elapsed_s=float(data.get("elapsed_s", 0.0)))
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise RunDirError(f"{path} is unreadable ({err!r}): delete it to restart the run") from None


def _check_step(path: Path, meta: dict[str, str], expected_step: int | None) -> None:
    if expected_step is not None and meta.get("step") not in (None, str(expected_step)):
        raise RunDirError(
            f"{path.name} holds step {meta.get('step')} but state.json says {expected_step}: "
            "the last checkpoint was interrupted between files; delete state.json to use the "
            "files as they are"
        )


def _load_weights(path: Path, module: torch.nn.Module, expected_step: int | None) -> None:
    if not path.is_file():
        raise RunDirError(f"{path} is missing: the run has no saved weights yet")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
    _check_step(path, meta, expected_step)
    tensors = load_file(str(path))
    try:
        missing, unexpected = module.load_state_dict(tensors, strict=False)
    except RuntimeError as err:  # tensors of the wrong shape
        first = str(err).strip().splitlines()[-1].strip()
        raise RunDirError(f"{path} does not fit the model in the config: {first}") from None
    if missing or unexpected:
        raise RunDirError(
            f"{path} does not fit the model in config.json (missing {len(missing)} and "
            f"unexpected {len(unexpected)} tensors, e.g. {(missing or unexpected)[0]})"
        )


def load_weights(run_dir: Path, module: torch.nn.Module, which: str = "ema") -> int | None:
    """Load ``ema`` or ``model`` weights into ``module``; returns the checkpoint step."""
    state = read_training_state(run_dir)
    name = EMA_FILE if which == "ema" else MODEL_FILE
    _load_weights(run_dir / name, module, state.step if state else None)
    return state.step if state else None


def load_optimizer(run_dir: Path, optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """Restore the optimizer state; returns the saved training RNG state."""
    from safetensors import safe_open

    path = run_dir / OPTIMIZER_FILE
    if not path.is_file():
        raise RunDirError(f"{path} is missing: cannot resume the optimizer")
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
    state = read_training_state(run_dir)
    _check_step(path, meta, state.step if state else None)
    tensors = load_file(str(path))
    optimizer.load_state_dict(optimizer_from_tensors(tensors, meta["optimizer"]))
    return tensors["rng.train"]


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    """Append one JSON line (flushed) to metrics.jsonl."""
    with open(run_dir / METRICS_FILE, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()


def load_extra_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    """The ``extra`` tensors saved with the optimizer (empty for runs that have none)."""
    path = run_dir / OPTIMIZER_FILE
    if not path.is_file():
        return {}
    tensors = load_file(str(path))
    return {k.removeprefix("extra."): v for k, v in tensors.items() if k.startswith("extra.")}
