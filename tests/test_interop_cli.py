"""`ddpm export` and `ddpm import`: files, model card, refusals, and an imported run that samples
and fine-tunes with `train --resume`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ddpmkit.cli import main
from ddpmkit.interop.model_card import dataset_id, read_front_matter
from ddpmkit.rundir import RunDir
from interop_helpers import TINY_MODEL, make_run

diffusers = pytest.importorskip("diffusers")
diffusers.utils.logging.set_verbosity_error()


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    ("command", "options"),
    [("export", {"--format", "--out", "--weights", "--step"}), ("import", {"--out"})],
)
def test_help_lists_every_option(command: str, options: set[str], capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: ddpm {command}")
    for option in options:
        assert option in out


def test_export_writes_a_hub_folder_with_model_card(tmp_path: Path, capsys) -> None:
    make_run(tmp_path / "run", TINY_MODEL, data={"source": "data/cifar10/train"})
    run = RunDir(tmp_path / "run")
    row = {
        "sampler": "dpm++",
        "steps": 20,
        "nfe": 20,
        "n": 1000,
        "fid": 12.5,
        "kid_mean": 0.01,
        "kid_std": 0.001,
        "precision": 0.6,
        "recall": 0.5,
        "seconds": 1.0,
        "feature_seconds": 1.0,
    }
    run.write_json(
        "eval.json", {"features": "inception", "step": 7, "weights": "ema", "results": [row]}
    )
    run.write_json("nll.json", {"bits_per_dim": 3.75, "ci95": 0.02, "n": 100, "step": 7})
    out = tmp_path / "pipe"
    code = main(["export", str(tmp_path / "run"), "--format", "diffusers", "--out", str(out)])
    assert code == 0
    assert "exported step 7 (ema weights)" in capsys.readouterr().out
    for name in (
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
        "README.md",
        "ddpmkit.json",
    ):
        assert (out / name).is_file(), name
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "DDPMPipeline"
    assert index["unet"] == ["diffusers", "UNet2DModel"]
    assert index["scheduler"] == ["diffusers", "DDPMScheduler"]

    card = (out / "README.md").read_text()
    front = read_front_matter(card)
    assert front["library_name"] == "diffusers"
    assert front["pipeline_tag"] == "unconditional-image-generation"
    assert "ddpmkit" in front["tags"] and front["datasets"] == ["cifar10"]
    yaml = pytest.importorskip("yaml")
    meta = yaml.safe_load(card.split("---")[1])
    metrics = meta["model-index"][0]["results"][0]["metrics"]
    by_type = {m["type"]: m["value"] for m in metrics}
    assert by_type == {
        "fid": 12.5,
        "kid": 0.01,
        "precision": 0.6,
        "recall": 0.5,
        "bits_per_dim": 3.75,
    }
    assert meta["model-index"][0]["results"][0]["dataset"]["type"] == "cifar10"
    # the folder loads offline
    diffusers.DDPMPipeline.from_pretrained(out)


def test_model_card_leaves_out_metrics_of_other_checkpoints(tmp_path: Path, capsys) -> None:
    make_run(tmp_path / "run", TINY_MODEL)
    RunDir(tmp_path / "run").write_json(
        "eval.json", {"features": "digits", "step": 3, "weights": "ema", "results": []}
    )
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "pipe")]) == 0
    assert "eval.json scores step 3" in capsys.readouterr().err
    front = read_front_matter((tmp_path / "pipe" / "README.md").read_text())
    assert "model-index" not in front and "datasets" not in front


def test_dataset_ids() -> None:
    assert dataset_id("data/cifar10/train") == "cifar10"
    assert dataset_id("/x/CIFAR-10.npz") == "cifar10"
    assert dataset_id("digits") is None and dataset_id("./faces") is None


@pytest.mark.parametrize(
    ("model", "named"),
    [
        ({"block_type": "convnext"}, "block_type='convnext'"),
        ({"attention": ["linear", "none"]}, "'linear'"),
    ],
)
def test_export_refusals_are_one_line(tmp_path: Path, capsys, model: dict, named: str) -> None:
    make_run(tmp_path / "run", {**TINY_MODEL, **model})
    code = main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "pipe")])
    assert code == 2
    line = _error_line(capsys)
    assert line.startswith("ddpm export: error:") and named in line
    assert not (tmp_path / "pipe").exists()


def test_export_refuses_a_folder_with_other_files(tmp_path: Path, capsys) -> None:
    make_run(tmp_path / "run", TINY_MODEL)
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "notes.txt").write_text("mine")
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "pipe")]) == 2
    assert "not empty" in _error_line(capsys)
    # a previous export is replaced
    (tmp_path / "pipe" / "notes.txt").unlink()
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "pipe")]) == 0
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "pipe")]) == 0


def _hub_folder(folder: Path, sample_size: int = 8) -> torch.nn.Module:
    """A tiny UNet2DModel + DDPMScheduler saved by diffusers, as downloaded from the Hub."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=sample_size,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=4,
        attention_head_dim=8,
    )
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=50, beta_start=0.002, beta_end=0.4)
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    return unet


def test_imported_hub_model_samples_and_fine_tunes(tmp_path: Path, capsys, shapes_npz) -> None:
    _hub_folder(tmp_path / "pipe")
    run_dir = tmp_path / "run"
    assert main(["import", str(tmp_path / "pipe"), "--out", str(run_dir)]) == 0
    captured = capsys.readouterr()
    assert "at step 0" in captured.out and "placeholder" in captured.err
    config = RunDir(run_dir).read_config()
    assert config.model.time_flip_sin_to_cos and config.model.time_freq_shift == 0
    assert config.model.attention_heads == 2 and config.diffusion.num_steps == 50

    grid = tmp_path / "grid.png"
    args = ["--n", "2", "--sampler", "ddim", "--steps", "3", "--device", "cpu", "--no-progress"]
    assert main(["sample", str(run_dir), *args, "--out", str(grid)]) == 0
    assert grid.is_file()

    overrides = [
        "train.steps=2",
        "train.batch_size=8",
        "train.log_every=1",
        "train.warmup_steps=1",
        "train.sample_every=0",
        "train.checkpoint_every=0",
        "train.device=cpu",
        "train.amp=false",
    ]
    code = main(
        ["train", "--resume", str(run_dir), "--data", str(shapes_npz), "--no-progress", *overrides]
    )
    assert code == 0, capsys.readouterr().err
    checkpoint = RunDir(run_dir).load_checkpoint()
    assert checkpoint.step == 2
    assert checkpoint.tensors["optimizer"]  # AdamW moments after two steps


def test_import_refuses_pickled_weights(tmp_path: Path, capsys) -> None:
    _hub_folder(tmp_path / "pipe")
    weights = tmp_path / "pipe" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_name("diffusion_pytorch_model.bin"))
    assert main(["import", str(tmp_path / "pipe"), "--out", str(tmp_path / "run")]) == 2
    line = _error_line(capsys)
    assert "pickle" in line and "safe_serialization=True" in line
    assert not (tmp_path / "run").exists()


def test_import_refusals(tmp_path: Path, capsys) -> None:
    _hub_folder(tmp_path / "pipe")
    assert main(["import", str(tmp_path / "pipe"), "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    # an existing run is never overwritten
    assert main(["import", str(tmp_path / "pipe"), "--out", str(tmp_path / "run")]) == 2
    assert "already holds a run" in _error_line(capsys)
    # not a pipeline folder
    assert main(["import", str(tmp_path), "--out", str(tmp_path / "run2")]) == 2
    assert "unet/config.json" in _error_line(capsys)
    # a text-to-image pipeline
    index = tmp_path / "pipe" / "model_index.json"
    data = json.loads(index.read_text())
    index.write_text(json.dumps({**data, "unet": ["diffusers", "UNet2DConditionModel"]}))
    assert main(["import", str(tmp_path / "pipe"), "--out", str(tmp_path / "run3")]) == 2
    assert "UNet2DConditionModel" in _error_line(capsys)
    # a scheduler whose β range is not one of ddpmkit's schedules
    index.write_text(json.dumps(data))
    scheduler = tmp_path / "pipe" / "scheduler" / "scheduler_config.json"
    config = json.loads(scheduler.read_text())
    scheduler.write_text(json.dumps({**config, "beta_end": 0.5}))
    assert main(["import", str(tmp_path / "pipe"), "--out", str(tmp_path / "run4")]) == 2
    assert "beta_end=0.5" in _error_line(capsys)
    # a fixed variance with a doubled output
    scheduler.write_text(json.dumps(config))
    unet_config = tmp_path / "pipe" / "unet" / "config.json"
    unet = json.loads(unet_config.read_text())
    unet_config.write_text(json.dumps({**unet, "out_channels": 2}))
    assert main(["import", str(tmp_path / "pipe"), "--out", str(tmp_path / "run5")]) == 2
    assert "variance_type is fixed_small" in _error_line(capsys)


def test_flat_layout_of_early_hub_uploads(tmp_path: Path, capsys) -> None:
    _hub_folder(tmp_path / "pipe")
    flat = tmp_path / "flat"
    flat.mkdir()
    for source in (tmp_path / "pipe" / "unet").iterdir():
        source.rename(flat / source.name)
    (tmp_path / "pipe" / "scheduler" / "scheduler_config.json").rename(
        flat / "scheduler_config.json"
    )
    assert main(["import", str(flat), "--out", str(tmp_path / "run")]) == 0


def test_the_model_cards_example_runs_on_a_short_process(tmp_path: Path) -> None:
    """DDPMPipeline's default 1000 steps fail on a T = 100 export: the card's example names T,
    and that very line runs in diffusers."""
    make_run(tmp_path / "run", TINY_MODEL, diffusion={"num_steps": 100})
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "hub")]) == 0
    card = (tmp_path / "hub" / "README.md").read_text(encoding="utf-8")
    line = next(x for x in card.splitlines() if x.startswith("image = pipeline("))
    assert "num_inference_steps=100" in line
    pipeline = diffusers.DDPMPipeline.from_pretrained(str(tmp_path / "hub"))
    pipeline.set_progress_bar_config(disable=True)
    scope = {"pipeline": pipeline}
    exec(line, scope)  # the card's own line
    assert scope["image"].size == (16, 16)
