"""Reading run directories written by ddpmkit 0.1 (checkpoint format 1).

Format 1 kept one checkpoint at the top level of the run directory: ``model``, ``ema`` and
``optimizer.safetensors`` (each with a ``step`` metadata entry) and ``state.json`` written last.
The optimizer file also held the training RNG as one hand-packed byte tensor ``rng.train``
(int64 header ``[-4, cursor, *sizes]``, then the data generator, the noise generator, the global
generator and the epoch's permutation; the first layout had only ``[size, data, noise]``) and the
importance sampler's history as ``extra.timesteps.*``. This module turns such a directory into the
:class:`~ddpmkit.rundir.Checkpoint` of format 2, so sampling, evaluation and ``--resume`` work;
the next checkpoint that training writes is in format 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ddpmkit.errors import CorruptFileError, RunDirError
from ddpmkit.fileio import load_tensors

STATE_FILE = "state.json"
FILES = {
    "model": "model.safetensors",
    "ema": "ema.safetensors",
    "optimizer": "optimizer.safetensors",
}


def has_flat_checkpoint(run_dir: Path) -> bool:
    return (run_dir / STATE_FILE).is_file() and (run_dir / FILES["ema"]).is_file()


def _state(run_dir: Path) -> dict[str, Any]:
    path = run_dir / STATE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {"step": int(data["step"]), "elapsed_s": float(data.get("elapsed_s", 0.0))}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise RunDirError(f"{path} is unreadable ({err!r})") from None


def flat_step(run_dir: Path) -> int:
    return _state(run_dir)["step"]


def split_rng_bytes(packed: torch.Tensor) -> dict[str, Any]:
    """The parts of format 1's ``rng.train`` bytes: data, noise, torch (global) generator
    states, the epoch's permutation ``order`` and the ``cursor`` in it (absent parts: None)."""
    first = int(packed[:8].clone().view(torch.int64)[0])
    if first > 0:  # the first layout: [data size, data, noise]
        return {
            "data": packed[8 : 8 + first].clone(),
            "noise": packed[8 + first :].clone(),
            "torch": None,
            "order": None,
            "cursor": 0,
        }
    header = packed[: 8 * (2 - first)].clone().view(torch.int64).tolist()
    cursor, sizes = header[1], header[2:]
    offsets = [8 * len(header)]
    for size in sizes:
        offsets.append(offsets[-1] + size)
    data, noise, global_state, order = (
        packed[a:b].clone() for a, b in zip(offsets, offsets[1:], strict=False)
    )
    return {
        "data": data,
        "noise": noise,
        "torch": global_state,
        "order": order.view(torch.int64),
        "cursor": cursor,
    }


def load_flat_checkpoint(run_dir: Path, files: tuple[str, ...] | None = None):
    """The format 1 checkpoint of ``run_dir`` as a format 2 :class:`Checkpoint`."""
    from ddpmkit.rundir import Checkpoint

    state = _state(run_dir)
    step = state["step"]
    checkpoint = Checkpoint(step=step, path=run_dir, state={**state, "format": 1})
    for stem, name in FILES.items():
        if files is not None and stem not in files:
            continue
        path = run_dir / name
        tensors, meta = load_tensors(path)
        if meta.get("step") not in (None, str(step)):
            raise CorruptFileError(
                f"{path} holds step {meta.get('step')} but state.json says {step}: the last "
                "checkpoint of this 0.1 run directory was interrupted between files"
            )
        checkpoint.tensors[stem] = {k: v for k, v in tensors.items()}
        checkpoint.metadata[stem] = meta
    optimizer = checkpoint.tensors.get("optimizer")
    if optimizer is not None:
        rng = split_rng_bytes(optimizer.pop("rng.train"))
        train_state = {
            f"{k.removeprefix('extra.')}": optimizer.pop(k)
            for k in [k for k in optimizer if k.startswith("extra.")]
        }
        train_state["rank0.rng.data"] = rng["data"]
        train_state["rank0.rng.noise"] = rng["noise"]
        if rng["torch"] is not None:
            train_state["rank0.rng.torch"] = rng["torch"]
        if rng["order"] is not None:
            train_state["rank0.data.order"] = rng["order"]
        checkpoint.tensors["train_state"] = train_state
        checkpoint.state["ranks"] = [{"cursor": rng["cursor"]}]
        checkpoint.state["world_size"] = 1
    return checkpoint
