"""``ddpm import DIR --out RUN``: a diffusers ``UNet2DModel`` + ``DDPMScheduler`` folder (as
downloaded from the Hugging Face Hub) becomes a run directory.

The folder is read the way a user has it: ``model_index.json``, ``unet/config.json``,
``unet/diffusion_pytorch_model.safetensors`` and ``scheduler/scheduler_config.json`` (the older
flat layout, with the U-Net's config.json and scheduler_config.json at the top, is read too).
Weights in a pickled ``.bin`` are refused: ddpmkit never unpickles; the message says how to
convert them.

The run directory gets ``config.json`` and one checkpoint (step 0, or the step recorded by
``ddpm export`` in ``ddpmkit.json``) whose model and EMA weights are the imported ones and whose
optimizer state is a fresh AdamW's (no moments): ``ddpm sample|eval|nll`` work on it at once
and ``ddpm train --resume RUN`` fine-tunes it. A folder written by ``ddpm export`` carries the
run's full config in ``ddpmkit.json``; it is used when it still describes the folder's configs,
so export → import gives back the same config and weights.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ddpmkit import __version__
from ddpmkit.config import RunConfig, completed_saved_config, config_from_dict
from ddpmkit.errors import DdpmkitError
from ddpmkit.fileio import load_tensors
from ddpmkit.interop.diffusers_config import (
    SAMPLING_ONLY_KEYS,
    SCHEDULER_CLASS,
    SCHEDULER_DEFAULTS,
    UNET_CLASS,
    UNET_DEFAULTS,
    InteropError,
    scheduler_from_diffusers,
    scheduler_to_diffusers,
    unet_from_diffusers,
    unet_to_diffusers,
)
from ddpmkit.interop.diffusers_weights import from_diffusers
from ddpmkit.interop.export import DDPMKIT_FILE, WEIGHTS_FILE
from ddpmkit.interop.model_card import read_front_matter
from ddpmkit.nn import UNet
from ddpmkit.rundir import RunDir

MAX_JSON_BYTES = 1 << 20  # configs are a few kB; ddpmkit.json with trained_betas some 30 kB
_MAX_CARD_BYTES = 1 << 20


@dataclass
class ImportResult:
    run_dir: Path
    step: int
    config: RunConfig
    source: str  # "ddpmkit.json" or "diffusers configs"
    notes: list[str] = field(default_factory=list)


def _read_json(path: Path, what: str) -> Any:
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise InteropError(f"{what} '{path}' is {size} bytes: too large for a config")
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise InteropError(f"cannot read {what} '{path}': {err.strerror or err}") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise InteropError(
            f"{what} '{path}' is not valid JSON: {' '.join(str(err).split())}"
        ) from None


def _json_object(path: Path, what: str) -> dict[str, Any]:
    data = _read_json(path, what)
    if not isinstance(data, dict):
        raise InteropError(f"{what} '{path}' does not hold a JSON object")
    return data


def _component(index: dict[str, Any], name: str, expected: str) -> None:
    entry = index.get(name)
    if entry is None:
        raise InteropError(f"model_index.json lists no '{name}': not a DDPMPipeline-like folder")
    cls = entry[1] if isinstance(entry, list) and len(entry) == 2 else entry
    if name == "scheduler" and cls in (SCHEDULER_CLASS, "DDIMScheduler"):
        return
    if cls != expected:
        raise InteropError(
            f"model_index.json's {name} is {cls!r}; ddpmkit imports a {expected} "
            "(unconditional pixel-space DDPM)"
        )


def _locate(folder: Path) -> tuple[Path, Path]:
    """(U-Net folder, scheduler config path) of a pipeline folder, checking model_index.json."""
    if not folder.is_dir():
        what = "a file" if folder.exists() else "not found"
        raise InteropError(f"'{folder}' is {what}: give the folder of a diffusers pipeline")
    index_path = folder / "model_index.json"
    if index_path.is_file():
        index = _json_object(index_path, "model_index.json")
        _component(index, "unet", UNET_CLASS)
        _component(index, "scheduler", SCHEDULER_CLASS)
    for unet_dir, scheduler in (
        (folder / "unet", folder / "scheduler" / "scheduler_config.json"),
        (folder, folder / "scheduler_config.json"),  # the flat layout of early Hub uploads
    ):
        if (unet_dir / "config.json").is_file() and scheduler.is_file():
            return unet_dir, scheduler
    raise InteropError(
        f"'{folder}' has no unet/config.json and scheduler/scheduler_config.json: give the "
        "folder of a diffusers UNet2DModel + DDPMScheduler pipeline"
    )


def _weights_path(unet_dir: Path) -> Path:
    for name in (WEIGHTS_FILE, "diffusion_pytorch_model.fp16.safetensors"):
        if (unet_dir / name).is_file():
            return unet_dir / name
    if (unet_dir / f"{WEIGHTS_FILE}.index.json").is_file():
        raise InteropError(
            f"'{unet_dir}' holds sharded weights; save them in one file first "
            "(UNet2DModel.from_pretrained(DIR).save_pretrained(DIR, max_shard_size='100GB'))"
        )
    bins = sorted(p.name for p in unet_dir.glob("*.bin"))
    if bins:
        raise InteropError(
            f"'{unet_dir / bins[0]}' is a pickle, which ddpmkit never loads; convert it to "
            'safetensors first, e.g. python -c "from diffusers import UNet2DModel; '
            f"UNet2DModel.from_pretrained('{unet_dir}').save_pretrained('{unet_dir}', "
            'safe_serialization=True)"'
        )
    raise InteropError(f"'{unet_dir}' has no {WEIGHTS_FILE}")


def _ddpmkit_block(
    folder: Path, unet_json: dict[str, Any], scheduler_json: dict[str, Any]
) -> tuple[RunConfig, int] | None:
    """The config and step that ``ddpm export`` recorded, if it still describes the folder."""
    path = folder / DDPMKIT_FILE
    if not path.is_file():
        return None
    data = _json_object(path, DDPMKIT_FILE)
    step = data.get("step", 0)
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise InteropError(f"{path}: step must be an integer >= 0, got {step!r}")
    try:
        config = config_from_dict(completed_saved_config(data.get("config")))
        unet = unet_to_diffusers(config.model, config.data.image_size)
        scheduler = scheduler_to_diffusers(config.diffusion, config.sample.clip_x0)
    except DdpmkitError:
        return None
    present_unet = {**UNET_DEFAULTS, **unet_json}
    present_scheduler = {**SCHEDULER_DEFAULTS, **scheduler_json}
    if any(present_unet[k] != unet[k] for k in UNET_DEFAULTS) or any(
        present_scheduler[k] != scheduler[k]
        for k in SCHEDULER_DEFAULTS
        if k not in SAMPLING_ONLY_KEYS
    ):
        return None
    return config, step


def _dataset_placeholder(folder: Path) -> str:
    card = folder / "README.md"
    datasets: Any = None
    try:
        if card.is_file() and card.stat().st_size <= _MAX_CARD_BYTES:
            datasets = read_front_matter(card.read_text(encoding="utf-8")).get("datasets")
    except (OSError, UnicodeDecodeError):
        datasets = None
    name = datasets[0] if isinstance(datasets, list) and datasets else datasets
    if isinstance(name, str) and name.strip():
        return f"data/{name.strip().split('/')[-1]}"
    return "data/imported"


def import_diffusers(folder: str | Path, out: str | Path) -> ImportResult:
    """Turn the diffusers pipeline ``folder`` into the run directory ``out`` (which must not
    hold a run yet) and return what was made of it."""
    from ddpmkit.train.setup import make_optimizer
    from ddpmkit.train.state import optimizer_to_tensors

    folder, run = Path(folder), RunDir(out)
    if run.path.exists() and not run.path.is_dir():
        raise InteropError(f"'{run.path}' is a file: give a new folder for the run")
    if run.path.is_dir() and (run.has_config() or run.has_checkpoint()):
        raise InteropError(f"'{run.path}' already holds a run: choose a new folder")
    unet_dir, scheduler_path = _locate(folder)
    unet_json = _json_object(unet_dir / "config.json", "U-Net config")
    scheduler_json = _json_object(scheduler_path, "scheduler config")
    unet = unet_from_diffusers(unet_json)
    scheduler = scheduler_from_diffusers(scheduler_json)
    (model_config, image_size), (diffusion, clip_x0) = unet.value, scheduler.value
    if model_config.learned_variance != diffusion.learned_variance:
        raise InteropError(
            f"the U-Net has {model_config.out_channels} output channel(s) for "
            f"{model_config.in_channels} input channel(s) but the scheduler's variance_type is "
            f"{diffusion.variance}: a learned variance (learned_range) needs twice the "
            "input channels, a fixed one the same number"
        )
    notes = unet.notes + scheduler.notes
    recorded = _ddpmkit_block(folder, unet_json, scheduler_json)
    if recorded is not None:
        config, step = recorded
        source = DDPMKIT_FILE
    else:
        if (folder / DDPMKIT_FILE).is_file():
            notes.append(f"{DDPMKIT_FILE} does not describe this folder's configs: ignored")
        data_source = _dataset_placeholder(folder)
        config = config_from_dict(
            {
                "data": {
                    "source": data_source,
                    "image_size": image_size,
                    "channels": model_config.in_channels,
                },
                "model": model_config.to_dict(),
                "diffusion": dataclasses.asdict(diffusion),
                "sample": {"clip_x0": clip_x0},
            }
        )
        step = 0
        source = "diffusers configs"
        notes.append(
            f"data.source is a placeholder ('{data_source}'): give --data to train, eval and nll"
        )

    weights_path = _weights_path(unet_dir)
    tensors, _ = load_tensors(weights_path, what="diffusers weights")
    state = from_diffusers(tensors, config.model)
    model = UNet(config.model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1].strip()
        raise InteropError(
            f"the weights in '{weights_path}' do not fit the config: {first}"
        ) from None
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    tc = config.train
    optimizer = make_optimizer(model, tc, torch.device("cpu"))
    opt_tensors, opt_meta = optimizer_to_tensors(optimizer)  # no moments yet: {} and groups
    step_meta = {"step": str(step)}
    run.write_config(config)
    run.save_checkpoint(
        step,
        {
            "model": weights,
            "ema": {k: v.clone() for k, v in weights.items()},
            "optimizer": opt_tensors,
        },
        {"model": step_meta, "ema": step_meta, "optimizer": {**step_meta, "optimizer": opt_meta}},
        {
            "step": step,
            "elapsed_s": 0.0,
            "bad_steps": 0,
            "skipped_steps": 0,
            "world_size": 1,
            "ranks": [],
            "ddpmkit": __version__,
            "imported": {"format": "diffusers", "from": str(folder), "config": source},
        },
        keep=tc.keep_checkpoints,
    )
    return ImportResult(run.path, step, config, source, notes)
