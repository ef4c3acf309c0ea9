"""A trained run read back from its directory: config, network, diffusion and the denoiser that
every consumer (sampling, editing, the bound, evaluation) builds from it in one place."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ddpmkit.config import RunConfig
from ddpmkit.diffusion import GaussianDiffusion
from ddpmkit.errors import ConfigError
from ddpmkit.run.conditioning import Conditioning, read_conditioning
from ddpmkit.rundir import CLASSES_FILE, RunDir

GUIDANCE_CPU_MAX_BATCH = 256  # one doubled-batch guidance call up to this size on a CPU (measured)


def guidance_max_batch(device: torch.device) -> int | None:
    """The largest doubled batch of one guided call on ``device``: on a CPU two calls are
    faster beyond 256 images (BENCHMARKS.md); no limit elsewhere."""
    return GUIDANCE_CPU_MAX_BATCH if device.type == "cpu" else None


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → the first CUDA device if there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device '{name}': use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' asked for, but this machine has no CUDA GPU")
    return device


@dataclass
class LoadedRun:
    config: RunConfig
    model: torch.nn.Module
    diffusion: GaussianDiffusion
    step: int | None
    device: torch.device
    class_names: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return self.config.model.num_classes

    def conditioning(
        self, classes: str | None, guidance: float = 0.0, what: str = "sampling"
    ) -> Conditioning:
        """``--class``/``--guidance`` read against this run (names, indices, ``all``) and
        checked: classes on an unconditional run, guidance without classes, and anything that
        needs the untrained null class of a ``label_dropout=0`` run are refused."""
        return read_conditioning(
            classes,
            guidance,
            self.num_classes,
            self.class_names,
            self.config.train.label_dropout,
            what,
        )

    def denoiser(self, labels: torch.Tensor | None = None, guidance: float = 0.0, model=None):
        """The network read through the diffusion, at ``labels`` (None: unconditional — the
        null class of a conditional network) with classifier-free guidance ``guidance``;
        ``model`` replaces the network (e.g. wrapped in autocast)."""
        from ddpmkit.sampling.denoiser import ModelDenoiser

        return ModelDenoiser(
            self.model if model is None else model,
            self.diffusion,
            labels,
            self.num_classes if self.num_classes else None,
            guidance,
            max_batch=guidance_max_batch(self.device),
        )


def load_run(
    run_dir: str | Path, weights: str = "ema", device: str = "auto", step: int | None = None
) -> LoadedRun:
    """Rebuild the model and diffusion of a run directory with the ``ema`` or ``model`` weights
    of checkpoint ``step`` (default: the latest good one)."""
    from ddpmkit.nn import UNet
    from ddpmkit.train.state import load_module_weights

    if weights not in ("ema", "model"):
        raise ConfigError(f"weights must be 'ema' or 'model', got '{weights}'")
    run = RunDir(run_dir).require()
    config = run.read_config()
    torch_device = resolve_device(device)
    checkpoint = run.load_checkpoint(step, files=(weights,))
    model = UNet(config.model)
    load_module_weights(model, checkpoint, weights)
    model.to(torch_device).eval()
    diffusion = GaussianDiffusion.from_config(config.diffusion)
    names = run.read_json(CLASSES_FILE) or []
    return LoadedRun(config, model, diffusion, checkpoint.step, torch_device, list(names))
