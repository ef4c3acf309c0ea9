"""Helpers of the tests/test_interop_*.py files: run directories with random weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ddpmkit.config import RunConfig, config_from_dict
from ddpmkit.nn import UNet
from ddpmkit.rundir import RunDir
from ddpmkit.train_state import optimizer_to_tensors

FIXTURES = Path(__file__).parent / "fixtures"

# a U-Net of a few thousand parameters that diffusers' UNet2DModel expresses exactly
TINY_MODEL = {
    "in_channels": 1,
    "base_channels": 8,
    "channel_mults": [1, 2],
    "attention": ["none", "full"],
    "attention_heads": 1,
    "norm_groups": 4,
    "time_frequencies": "diffusers",
}


def sample_exported(run_dir: Path, folder: Path, steps: int):
    """Export ``run_dir`` to ``folder`` and draw 2 images (numpy NHWC) with diffusers'
    DDPMPipeline in ``steps`` steps, seeded."""
    import diffusers

    from ddpmkit.interop import export_diffusers

    export_diffusers(run_dir, folder)
    pipe = diffusers.DDPMPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        batch_size=2,
        num_inference_steps=steps,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images


def randomize(model: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> torch.nn.Module:
    """Give every parameter random values (fresh U-Nets are zero in many places): GroupNorm
    scales around 1, everything else N(0, scale²)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float64)
            is_norm_scale = p.ndim == 1 and "norm" in name and name.endswith("weight")
            value = 1 + 0.1 * noise if is_norm_scale else scale * noise
            p.copy_(value.to(p.dtype))
    return model


def make_run(
    path: Path,
    model: dict[str, Any] | None = None,
    diffusion: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    sample: dict[str, Any] | None = None,
    step: int = 7,
    seed: int = 0,
) -> tuple[RunConfig, UNet]:
    """A run directory with config.json and one checkpoint at ``step`` whose model and EMA
    weights are random (the EMA differs from the model); returns the config and the EMA net."""
    model = dict(model or {})
    data = {"image_size": 16, "channels": model.get("in_channels", 1), **(data or {})}
    config = config_from_dict(
        {"model": model, "diffusion": diffusion or {}, "data": data, "sample": sample or {}}
    )
    net = randomize(UNet(config.model), seed=seed)
    ema = randomize(UNet(config.model), seed=seed + 1)
    run = RunDir(path)
    run.write_config(config)
    optimizer = torch.optim.AdamW(net.parameters())
    opt_tensors, opt_meta = optimizer_to_tensors(optimizer)
    meta = {"step": str(step)}
    run.save_checkpoint(
        step,
        {"model": dict(net.state_dict()), "ema": dict(ema.state_dict()), "optimizer": opt_tensors},
        {"model": meta, "ema": meta, "optimizer": {**meta, "optimizer": opt_meta}},
        {},
    )
    return config, ema
