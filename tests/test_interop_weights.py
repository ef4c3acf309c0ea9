"""Weights through diffusers: an exported run loads in DDPMPipeline and its UNet2DModel gives our
output in float64; a UNet2DModel saved by diffusers imports and gives its own output; export →
import gives back the same weights and config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ddpmkit.generate import load_run
from ddpmkit.interop import export_diffusers, import_diffusers
from ddpmkit.interop.diffusers_config import InteropError
from ddpmkit.rundir import RunDir
from interop_helpers import FIXTURES, make_run, randomize, sample_exported

diffusers = pytest.importorskip("diffusers")
diffusers.utils.logging.set_verbosity_error()

TOLERANCE = 1e-10  # float64; measured ≤ 2.4e-15 on these models, 4.9e-15 on CIFAR-10's

CASES = {
    "scale_shift-heads2-learned_range-16x24": (
        {
            "in_channels": 3,
            "base_channels": 16,
            "channel_mults": [1, 2, 2],
            "attention": ["none", "full", "full"],
            "attention_heads": 2,
            "norm_groups": 4,
            "time_conditioning": "scale_shift",
        },
        # Ho et al.'s linear schedule and ε, written out (the run default moved to cosine and v)
        {"variance": "learned_range", "loss": "hybrid", "prediction": "eps", "schedule": "linear"},
        (16, 24),
    ),
    "add-heads4-learned_range-v-same-padding-24x16": (
        {
            "in_channels": 1,
            "base_channels": 16,
            "channel_mults": [1, 2],
            "attention": ["none", "full"],
            "attention_heads": 4,
            "norm_groups": 8,
            "time_conditioning": "add",
            "norm_eps": 1e-6,
            "downsample_padding": "same",
        },
        {"variance": "learned_range", "loss": "hybrid", "prediction": "v"},
        (24, 16),
    ),
    "add-head_dim8-fixed_large-flip-no-mid-attention": (
        {
            "in_channels": 3,
            "base_channels": 16,
            "channel_mults": [1, 1, 2],
            "blocks_per_resolution": 1,
            "attention": ["full", "full", "none"],
            "mid_attention": "none",
            "attention_heads": 2,
            "attention_head_dim": 8,
            "norm_groups": 4,
            "time_conditioning": "add",
            "time_flip_sin_to_cos": True,
            "time_freq_shift": 0,
        },
        {"variance": "fixed_large", "prediction": "v"},
        (16, 16),
    ),
    "scale_shift-heads1-x0-time40": (
        {
            "in_channels": 1,
            "base_channels": 8,
            "channel_mults": [1, 2],
            "attention": ["none", "full"],
            "attention_heads": 1,
            "norm_groups": 4,
            "time_embed_dim": 40,  # not 4 x 8: diffusers' time_embedding_dim
        },
        {"variance": "fixed_small", "prediction": "x0", "schedule": "cosine"},
        (8, 16),
    ),
}


def _forward_both(unet, ours, shape, channels: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, channels, *shape, generator=generator, dtype=torch.float64)
    t = torch.tensor([3, 871])
    with torch.no_grad():
        return unet.double().eval()(x, t).sample, ours.double().eval()(x, t)


@pytest.mark.parametrize("case", list(CASES))
def test_exported_pipeline_matches_in_float64(tmp_path: Path, case: str) -> None:
    model, diffusion, shape = CASES[case]
    model = {**model, "time_frequencies": "diffusers"}
    config, ema = make_run(tmp_path / "run", model, diffusion)
    result = export_diffusers(tmp_path / "run", tmp_path / "pipe")
    assert result.notes == [] and result.step == 7
    pipe = diffusers.DDPMPipeline.from_pretrained(tmp_path / "pipe")  # offline: a local folder
    assert type(pipe.unet).__name__ == "UNet2DModel"
    assert type(pipe.scheduler).__name__ == "DDPMScheduler"
    assert pipe.scheduler.config.variance_type == config.diffusion.variance
    assert pipe.unet.config.out_channels == config.model.out_channels
    assert pipe.unet.dtype == torch.float32  # written as the checkpoint holds it
    theirs, ours = _forward_both(pipe.unet, ema, shape, config.model.in_channels)
    assert theirs.shape == ours.shape == (2, config.model.out_channels, *shape)
    assert ours.abs().max() > 0.1  # random weights: a real signal, not zeros
    assert (theirs - ours).abs().max().item() <= TOLERANCE


def test_default_time_frequencies_agree_to_float32_rounding(tmp_path: Path) -> None:
    """model.time_frequencies=ddpmkit (the default) rounds some float32 frequencies differently
    from diffusers: the export is still usable, with a note; measured 1e-6 … 5e-6 relative."""
    model, diffusion, shape = CASES["scale_shift-heads2-learned_range-16x24"]
    config, ema = make_run(tmp_path / "run", model, diffusion)
    result = export_diffusers(tmp_path / "run", tmp_path / "pipe")
    assert any("time_frequencies" in note for note in result.notes)
    pipe = diffusers.DDPMPipeline.from_pretrained(tmp_path / "pipe")
    theirs, ours = _forward_both(pipe.unet, ema, shape, config.model.in_channels)
    relative = ((theirs - ours).abs().max() / ours.abs().max()).item()
    assert 0 < relative < 1e-4


def test_exported_pipeline_samples(tmp_path: Path) -> None:
    make_run(
        tmp_path / "run",
        CASES["scale_shift-heads1-x0-time40"][0],
        {"num_steps": 20},
        data={"image_size": 8},
    )
    images = sample_exported(tmp_path / "run", tmp_path / "pipe", steps=5)
    assert images.shape == (2, 8, 8, 1)


def test_model_weights_and_step_can_be_chosen(tmp_path: Path) -> None:
    model = {**CASES["scale_shift-heads1-x0-time40"][0], "time_frequencies": "diffusers"}
    config, _ = make_run(tmp_path / "run", model)
    result = export_diffusers(tmp_path / "run", tmp_path / "pipe", weights="model", step=7)
    assert result.weights == "model"
    exported = load_file(tmp_path / "pipe" / "unet" / "diffusion_pytorch_model.safetensors")
    raw = RunDir(tmp_path / "run").load_checkpoint(7, files=("model",)).tensors["model"]
    assert torch.equal(exported["conv_in.weight"], raw["conv_in.weight"])
    with pytest.raises(Exception, match="no checkpoint of step 8"):
        export_diffusers(tmp_path / "run", tmp_path / "pipe2", step=8)


# ---------------------------------------------------------------------- import
def _save_pipeline(unet, folder: Path, scheduler_config: dict) -> None:
    """A folder as a user has it after downloading a DDPMPipeline from the Hub."""
    scheduler = diffusers.DDPMScheduler.from_config(scheduler_config)
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(
        folder, safe_serialization=True
    )


def _cifar_unet():
    config = json.loads((FIXTURES / "ddpm-cifar10-32" / "unet_config.json").read_text())
    unet = diffusers.UNet2DModel.from_config(config)
    # diffusers' own init, with GroupNorm scales and biases moved off 1 and 0
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=generator))
    return unet


@pytest.mark.slow
def test_google_cifar10_layout_imports_exactly(tmp_path: Path) -> None:
    """Ho et al.'s CIFAR-10 model as google/ddpm-cifar10-32 ships it (config fixture, random
    weights): imported, ddpmkit's U-Net gives diffusers' output in float64."""
    unet = _cifar_unet()
    scheduler = json.loads((FIXTURES / "ddpm-cifar10-32" / "scheduler_config.json").read_text())
    _save_pipeline(unet, tmp_path / "pipe", scheduler)
    assert (tmp_path / "pipe" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    result = import_diffusers(tmp_path / "pipe", tmp_path / "run")
    assert result.step == 0 and result.source == "diffusers configs"
    run = load_run(tmp_path / "run", device="cpu")
    assert run.model.num_parameters() == 35_746_307
    assert run.config.diffusion.variance == "fixed_large" and run.config.sample.clip_x0
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = torch.tensor([517])
    with torch.no_grad():
        theirs = unet.double().eval()(x, t).sample
        ours = run.model.double()(x, t)
    assert ours.abs().max() > 0.1
    assert (theirs - ours).abs().max().item() <= TOLERANCE


def test_old_attention_key_names_import(tmp_path: Path) -> None:
    model = {**CASES["scale_shift-heads2-learned_range-16x24"][0], "time_frequencies": "diffusers"}
    make_run(tmp_path / "run", model, {"variance": "learned_range", "loss": "hybrid"})
    export_diffusers(tmp_path / "run", tmp_path / "pipe")
    path = tmp_path / "pipe" / "unet" / "diffusion_pytorch_model.safetensors"
    renames = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    old = {}
    for key, value in load_file(path).items():
        for new_name, old_name in renames.items():
            key = key.replace(f".{new_name}.", f".{old_name}.")
        old[key] = value
    assert any(".proj_attn." in k for k in old)
    save_file(old, path, metadata={"format": "pt"})
    import_diffusers(tmp_path / "pipe", tmp_path / "back")
    original = RunDir(tmp_path / "run").load_checkpoint(files=("ema",)).tensors["ema"]
    back = RunDir(tmp_path / "back").load_checkpoint(files=("ema",)).tensors["ema"]
    assert original.keys() == back.keys()
    assert all(torch.equal(original[k], back[k]) for k in original)
    # diffusers reads the old names too, and gives the same network
    pipe = diffusers.DDPMPipeline.from_pretrained(tmp_path / "pipe")
    ours = load_run(tmp_path / "back", device="cpu").model
    theirs, mine = _forward_both(pipe.unet, ours, (16, 24), 3)
    assert (theirs - mine).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize("case", list(CASES))
def test_export_import_round_trip(tmp_path: Path, case: str) -> None:
    """Our run → export → import: identical config (from ddpmkit.json) and weights, at the step
    of the exported checkpoint."""
    model, diffusion, _ = CASES[case]
    config, _ = make_run(tmp_path / "run", model, diffusion, sample={"clip_x0": False})
    export_diffusers(tmp_path / "run", tmp_path / "pipe")
    result = import_diffusers(tmp_path / "pipe", tmp_path / "back")
    assert result.source == "ddpmkit.json" and result.step == 7
    back = RunDir(tmp_path / "back")
    assert back.read_config().to_dict() == config.to_dict()
    original = RunDir(tmp_path / "run").load_checkpoint(files=("ema",)).tensors["ema"]
    checkpoint = back.load_checkpoint()
    assert checkpoint.step == 7
    for which in ("model", "ema"):
        tensors = checkpoint.tensors[which]
        assert tensors.keys() == original.keys()
        assert all(torch.equal(tensors[k], original[k]) for k in original)
    assert checkpoint.tensors["optimizer"] == {}


def test_round_trip_without_ddpmkit_json_derives_an_equivalent_config(tmp_path: Path) -> None:
    model, diffusion, shape = CASES["add-heads4-learned_range-v-same-padding-24x16"]
    config, ema = make_run(tmp_path / "run", model, diffusion)
    export_diffusers(tmp_path / "run", tmp_path / "pipe")
    (tmp_path / "pipe" / "ddpmkit.json").unlink()
    result = import_diffusers(tmp_path / "pipe", tmp_path / "back")
    assert result.source == "diffusers configs" and result.step == 0
    derived = RunDir(tmp_path / "back").read_config()
    assert derived.diffusion.variance == "learned_range" and derived.diffusion.loss == "hybrid"
    assert derived.diffusion.prediction == "v"
    expected = {**config.model.to_dict(), "time_frequencies": "diffusers"}
    assert derived.model.to_dict() == expected
    assert derived.data.source == "data/imported" and derived.data.image_size == 16


def test_edited_ddpmkit_json_is_ignored(tmp_path: Path) -> None:
    make_run(tmp_path / "run", CASES["scale_shift-heads1-x0-time40"][0])
    export_diffusers(tmp_path / "run", tmp_path / "pipe")
    config_path = tmp_path / "pipe" / "unet" / "config.json"
    edited = {**json.loads(config_path.read_text()), "norm_eps": 1e-6}
    config_path.write_text(json.dumps(edited))
    result = import_diffusers(tmp_path / "pipe", tmp_path / "back")
    assert result.source == "diffusers configs"
    assert any("ddpmkit.json" in note for note in result.notes)
    assert RunDir(tmp_path / "back").read_config().model.norm_eps == 1e-6


def test_mismatched_weights_are_one_line_errors(tmp_path: Path) -> None:
    make_run(tmp_path / "run", CASES["scale_shift-heads1-x0-time40"][0])
    export_diffusers(tmp_path / "run", tmp_path / "pipe")
    path = tmp_path / "pipe" / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(path)
    del tensors["conv_out.bias"]
    save_file(tensors, path)
    with pytest.raises(InteropError, match="conv_out.bias") as info:
        import_diffusers(tmp_path / "pipe", tmp_path / "back")
    assert "\n" not in str(info.value)
    tensors["conv_out.bias"] = torch.zeros(1)
    tensors["extra.weight"] = torch.zeros(1)
    save_file(tensors, path)
    with pytest.raises(InteropError, match="extra.weight"):
        import_diffusers(tmp_path / "pipe", tmp_path / "back")
    assert not (tmp_path / "back" / "config.json").exists()


def test_randomize_helper_touches_every_parameter() -> None:
    from ddpmkit.nn import UNet, UNetConfig

    net = randomize(UNet(UNetConfig()))
    assert all(p.abs().sum() > 0 for p in net.parameters())
