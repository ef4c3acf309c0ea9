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
