"""Processes of the multi-process tests (tests/test_distributed.py).

Functions started by torch.multiprocessing: a training process whose rank 1 alone can be given a
NaN loss (:func:`train_rank`), a sampling process (:func:`generate_rank`) and a likelihood
process (:func:`nll_rank`).

As a script, under ``python -m torch.distributed.run`` or alone, it runs ``ddpm ARGS...`` with
test hooks that ddpmkit itself does not have::

    python tests/ddp_worker.py [--sgd] [--record DIR] ARGS...

``--sgd``: plain SGD (same learning rate) instead of AdamW; ``--record DIR``: every process
appends the data indices it trains on, with the step, to ``DIR/rank{RANK}.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def train_rank(rank: int, world: int, run_dir: str, overrides: list[str], port: int, nan_call: int):
    import torch

    from ddpmkit.config import resolve_config
    from ddpmkit.diffusion import GaussianDiffusion
    from ddpmkit.train import Trainer

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


def nll_rank(rank: int, world: int, port: int, run_dir: str, out: str) -> None:
    """Bound 5 images in batches of 8 (one batch: process 1's share is empty) and 19 in batches
    of 4, split between the processes; every process writes the reports it got."""
    import json
    from dataclasses import asdict

    import torch
    import torch.distributed as dist

    from ddpmkit.generate import load_run
    from ddpmkit.nll import evaluate_nll

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    run = load_run(run_dir, device="cpu")
    reports = [
        asdict(evaluate_nll(run, n=n, batch_size=b, seed=2, progress=False, distributed=True))
        for n, b in ((5, 8), (19, 4))
    ]
    with open(f"{out}-{rank}.json", "w", encoding="utf-8") as f:
        json.dump(reports, f)
    dist.destroy_process_group()


def stand_in_model(x, t):
    import torch

    return torch.tanh(0.6 * x + 0.02 * t.view(-1, 1, 1, 1))


def _use_sgd() -> None:
    """Replace AdamW by SGD for this process: AdamW divides each gradient element by its running
    RMS, so elements whose gradient is ~0 take steps of ±lr set by float rounding; SGD's step
    is lr × gradient, so runs whose gradients agree to rounding keep weights that agree too."""
    import torch

    def sgd(params, lr, **_ignored):
        return torch.optim.SGD(params, lr=lr)

    torch.optim.AdamW = sgd


def _record_indices(folder: str) -> None:
    """Log ``(step, indices)`` of every micro-batch this process takes from its data."""
    from ddpmkit.data.loader import DeviceBatches
    from ddpmkit.train.loop import Trainer

    path = os.path.join(folder, f"rank{os.environ.get('RANK', '0')}.jsonl")
    os.makedirs(folder, exist_ok=True)
    real_next, real_step = DeviceBatches.next, Trainer._forward_backward
    step = [None]

    def forward_backward(self):
        step[0] = self.state.step
        return real_step(self)

    def recording(self):
        index, images = real_next(self)
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step[0], "indices": index.tolist()}) + "\n")
        return index, images

    Trainer._forward_backward = forward_backward
    DeviceBatches.next = recording


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="ddpm ARGS... with test hooks")
    parser.add_argument("--sgd", action="store_true")
    parser.add_argument("--record", metavar="DIR")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    options = parser.parse_args()
    if options.sgd:
        _use_sgd()
    if options.record:
        _record_indices(options.record)
    from ddpmkit.cli import main

    sys.exit(main(options.args))
