"""``ddpm export RUN --format diffusers --out DIR``: a run directory as a diffusers pipeline folder.

Layout written (what ``DDPMPipeline.from_pretrained(DIR)`` and the Hugging Face Hub expect)::

    model_index.json                          DDPMPipeline: UNet2DModel unet, DDPMScheduler
    unet/config.json                          UNet2DModel config
    unet/diffusion_pytorch_model.safetensors  the EMA (or model) weights, diffusers' key names
    scheduler/scheduler_config.json           DDPMScheduler config
    README.md                                 model card with the Hub's YAML front matter
    ddpmkit.json                              the run's config and step, for `ddpm import`

Everything the U-Net or scheduler of diffusers cannot express exactly is refused before anything
is written (see :mod:`ddpmkit.interop.diffusers_config`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import save as safetensors_bytes

from ddpmkit import __version__
from ddpmkit.config.messages import check_choice
from ddpmkit.errors import ConfigError
from ddpmkit.fileio import atomic_write_bytes, atomic_write_text
from ddpmkit.interop.diffusers_config import (
    DIFFUSERS_VERSION,
    PIPELINE_CLASS,
    SCHEDULER_CLASS,
    UNET_CLASS,
    InteropError,
    scheduler_to_diffusers,
    unet_to_diffusers,
)
from ddpmkit.interop.diffusers_weights import to_diffusers
from ddpmkit.interop.model_card import model_card
from ddpmkit.nn import UNet
from ddpmkit.rundir import EVAL_FILE, NLL_FILE, RunDir

FORMATS = ("diffusers",)
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
DDPMKIT_FILE = "ddpmkit.json"
DDPMKIT_FORMAT = 1


@dataclass
class ExportResult:
    path: Path
    step: int
    weights: str
    files: list[Path]
    notes: list[str] = field(default_factory=list)


def _json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise InteropError(f"'{out}' is a file: give a folder for the pipeline")
    if out.is_dir() and any(out.iterdir()) and not (out / "model_index.json").is_file():
        raise InteropError(
            f"'{out}' is not empty and holds no model_index.json: choose a new or empty folder"
        )


def export_diffusers(
    run_dir: str | Path,
    out: str | Path,
    *,
    weights: str = "ema",
    step: int | None = None,
    fmt: str = "diffusers",
) -> ExportResult:
    """Write the ``weights`` ("ema" or "model") of checkpoint ``step`` (default: the latest
    good one) of ``run_dir`` as a diffusers ``DDPMPipeline`` folder ``out``."""
    check_choice("export format", fmt, FORMATS)
    if weights not in ("ema", "model"):
        raise ConfigError(f"weights must be 'ema' or 'model', got '{weights}'")
    from ddpmkit.train.state import load_module_weights

    out = Path(out)
    run = RunDir(run_dir).require()
    config = run.read_config()
    # refusals first: the process (EDM, learned variance), then the network
    scheduler_config = scheduler_to_diffusers(config.diffusion, config.sample.clip_x0)
    unet_config = unet_to_diffusers(config.model, config.data.image_size)
    _check_out(out)
    checkpoint = run.load_checkpoint(step, files=(weights,))
    model = UNet(config.model)
    load_module_weights(model, checkpoint, weights)
    tensors = to_diffusers(model.state_dict(), config.model)

    notes = []
    if config.model.time_frequencies != "diffusers":
        notes.append(
            "diffusers rounds the time embedding's float32 frequencies differently from "
            "model.time_frequencies=ddpmkit: its outputs match this run's to about 5e-6 "
            "relative, not bit for bit (train with model.time_frequencies=diffusers for that)"
        )
    name = Path(run_dir).resolve().name or "ddpm"
    card, card_notes = model_card(
        name,
        config,
        checkpoint.step,
        weights,
        eval_json=run.read_json(EVAL_FILE),
        nll_json=run.read_json(NLL_FILE),
        parameters=model.num_parameters(),
    )
    notes += card_notes
    index = {
        "_class_name": PIPELINE_CLASS,
        "_diffusers_version": DIFFUSERS_VERSION,
        "scheduler": ["diffusers", SCHEDULER_CLASS],
        "unet": ["diffusers", UNET_CLASS],
    }
    ddpmkit_info = {
        "format": DDPMKIT_FORMAT,
        "ddpmkit": __version__,
        "step": checkpoint.step,
        "weights": weights,
        "config": config.to_dict(),
    }
    files = {
        "unet/config.json": _json(unet_config),
        "scheduler/scheduler_config.json": _json(scheduler_config),
        DDPMKIT_FILE: _json(ddpmkit_info),
        "README.md": card,
    }
    written = []
    weights_path = out / "unet" / WEIGHTS_FILE
    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write_bytes(weights_path, safetensors_bytes(cpu, metadata={"format": "pt"}))
    written.append(weights_path)
    for relative, text in files.items():
        path = out / relative
        atomic_write_text(path, text)
        written.append(path)
    index_path = out / "model_index.json"  # last: a folder with it is complete
    atomic_write_text(index_path, _json(index))
    written.append(index_path)
    return ExportResult(out, checkpoint.step, weights, written, notes)
