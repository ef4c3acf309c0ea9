"""What a run starts from: the checkpoint to resume, a fresh training state, the model the steps
call."""

from __future__ import annotations

import copy

import torch

from ddpmkit.config import RunConfig, TrainConfig
from ddpmkit.diffusion import GaussianDiffusion
from ddpmkit.errors import ConfigError, RunDirError
from ddpmkit.nn import UNet
from ddpmkit.rundir import Checkpoint, RunDir
from ddpmkit.timesteps import make_timestep_sampler
from ddpmkit.train.muon import MuonAdamW, muon_parameters, stacked_blocks
from ddpmkit.train.state import TrainState


def previous_checkpoint(run: RunDir, tc: TrainConfig, resume: bool) -> Checkpoint | None:
    """The checkpoint to resume from (None: a new run, or one stopped before its first
    checkpoint); a run directory already holding a run needs ``resume``."""
    checkpoint = None
    if run.path.is_dir() and run.has_checkpoint():
        if not resume:
            step = run.load_checkpoint(files=()).step
            raise RunDirError(
                f"'{run.path}' already holds a run at step {step}: resume it with "
                f"`ddpm train --resume {run.path}` or choose another --out"
            )
        checkpoint = run.load_checkpoint()
    elif resume and not run.has_config():
        raise RunDirError(f"nothing to resume: '{run.path}' holds no run")
    if checkpoint is not None and checkpoint.step > tc.steps:
        raise ConfigError(
            f"the run in '{run.path}' is already at step {checkpoint.step}, past "
            f"train.steps={tc.steps}: give train.steps >= {checkpoint.step}"
        )
    return checkpoint


def new_state(
    config: RunConfig,
    diffusion: GaussianDiffusion,
    device: torch.device,
    *,
    scaled: bool,
    rank: int,
) -> TrainState:
    """A fresh TrainState: the U-Net initialised from ``train.seed`` alone, its EMA copy,
    its optimizer, the sampler of t, float16's GradScaler when ``scaled``; the state seeds this
    process's global generators (:meth:`TrainState.seed_process`)."""
    tc = config.train
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tc.seed)
        model = UNet(config.model).to(device)
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    state = TrainState(
        model=model,
        ema=copy.deepcopy(model).requires_grad_(False).eval(),
        optimizer=make_optimizer(model, tc, device),
        timestep_sampler=diffusion.training_sampler()  # None: uniform; EDM: log-normal σ
        if tc.timestep_sampler == "uniform"
        else make_timestep_sampler(tc.timestep_sampler, diffusion.num_steps),
        seed=tc.seed,
        device=device,
        scaler=torch.amp.GradScaler(device.type) if scaled else None,
    )
    state.seed_process(rank)
    return state


def make_optimizer(
    model: torch.nn.Module, tc: TrainConfig, device: torch.device
) -> torch.optim.Optimizer:
    """``train.optimizer`` for ``model``: AdamW (Loshchilov & Hutter 2019) on every parameter,
    or Muon on the hidden matrices with AdamW on the rest (:class:`MuonAdamW`; its Newton–Schulz
    iteration in float32 on the CPU, bfloat16 elsewhere)."""
    adamw = {
        "lr": tc.lr,
        "betas": (tc.adam_beta1, tc.adam_beta2),
        "weight_decay": tc.weight_decay,
        "fused": fused_adam(device, tc),
    }
    if tc.optimizer == "muon":
        hidden, rest = muon_parameters(model)
        ns_dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
        blocks = stacked_blocks(model) if tc.muon_split else None
        return MuonAdamW(
            hidden, rest, momentum=tc.muon_momentum, ns_dtype=ns_dtype, blocks=blocks, **adamw
        )
    return torch.optim.AdamW(model.parameters(), **adamw)


def fused_adam(device: torch.device, tc: TrainConfig) -> bool | None:
    """AdamW's kernel: one fused kernel for all parameters on CUDA, and on the CPU where
    ``train.cpu_fused_adam`` asks (a 3.9x faster optimizer step than torch's per-parameter
    loop on the digits default, BENCHMARKS.md; torch >= 2.4); None keeps torch's choice."""
    if device.type == "cuda" or (device.type == "cpu" and tc.cpu_fused_adam):
        return True
    return None


def training_model(model: torch.nn.Module, tc: TrainConfig, device: torch.device, world: int):
    """The model the steps call: wrapped in DDP under torchrun, compiled if asked."""
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if tc.compile:
        model = torch.compile(model)
    return model
