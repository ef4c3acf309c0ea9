"""A training process of a two-process (gloo, CPU) DDP run, started by torch.multiprocessing in
tests/test_improved_training.py; rank 1 alone can be given a NaN loss."""

from __future__ import annotations

import os


def train_rank(rank: int, world: int, run_dir: str, overrides: list[str], port: int, nan_call: int):
    import torch

    from ddpmkit.config import resolve_config
    from ddpmkit.diffusion import GaussianDiffusion
    from ddpmkit.training import Trainer

    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    if rank == 1 and nan_call:
        real = GaussianDiffusion.training_loss
        calls = 0

        def nan_on_this_rank(self, *args, **kwargs):
            nonlocal calls
            calls += 1
            out = real(self, *args, **kwargs)
            if calls == nan_call:
                out.loss = out.loss * float("nan")
            return out

        GaussianDiffusion.training_loss = nan_on_this_rank
    Trainer(resolve_config(overrides=overrides), run_dir, progress=False).train()
    torch.distributed.destroy_process_group()


def generate_rank(rank: int, world: int, port: int, out: str) -> None:
    """Draw 7 images with per-sample seeds, split between the processes; rank 0 writes them."""
    import numpy as np
    import torch
    import torch.distributed as dist

    from ddpmkit.diffusion import GaussianDiffusion
    from ddpmkit.generate import SampleRequest, generate
    from ddpmkit.schedules import make_schedule

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    diffusion = GaussianDiffusion(make_schedule("cosine", 30), "eps", "fixed_small")
    request = SampleRequest(n=7, sampler="ddpm", steps=6, seed=3, batch_size=2)
    result = generate(
        stand_in_model, diffusion, (1, 4, 4), request, torch.device("cpu"), False, True
    )
    if rank == 0:
        np.save(out, result.images.numpy())
    dist.destroy_process_group()


def stand_in_model(x, t):
    import torch

    return torch.tanh(0.6 * x + 0.02 * t.view(-1, 1, 1, 1))
