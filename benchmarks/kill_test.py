"""The kill test at scale, and the cost of a checkpoint (a benchmark, not a test).

1. SIGKILLs a tiny training run (checkpoint every step) at ``--kills`` random moments plus the
   forced points inside checkpoint writes of tests/test_killtest.py, resuming after each; every
   finished run is compared bit for bit with an uninterrupted one.
2. Times ``RunDir.save_checkpoint`` and ``load_checkpoint`` (hashes verified) for the shipped
   configs' models and prints seconds and bytes.

    python benchmarks/kill_test.py [--kills 200] [--seed 0] [--configs digits,cifar10_ddpm]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import shapes_array, tiny_overrides  # noqa: E402
from ddpmkit.config import resolve_config  # noqa: E402
from ddpmkit.nn import UNet  # noqa: E402
from ddpmkit.rundir import RunDir  # noqa: E402
from ddpmkit.train import TrainState  # noqa: E402
from killtest import kill_test  # noqa: E402
from test_killtest import FORCED  # noqa: E402


def checkpoint_cost(config_name: str, repeats: int = 3) -> dict[str, float]:
    path = ROOT / "configs" / f"{config_name}.toml"
    config = resolve_config(str(path) if path.is_file() else None)
    model = UNet(config.model)
    ema = UNet(config.model)
    optimizer = torch.optim.AdamW(model.parameters())
    for p in model.parameters():  # AdamW state of the same size as after training
        p.grad = torch.zeros_like(p)
    optimizer.step()
    state = TrainState(
        model=model,
        ema=ema,
        optimizer=optimizer,
        timestep_sampler=None,
        seed=0,
        device=torch.device("cpu"),
        step=1,
    )
    with tempfile.TemporaryDirectory() as folder:
        run = RunDir(folder)
        run.write_config(config)
        save, load = [], []
        for k in range(repeats):
            state.step = k + 1
            tensors, metadata, meta = state.state_dict()
            t0 = time.perf_counter()
            written = run.save_checkpoint(state.step, tensors, metadata, meta, keep=2)
            save.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            run.load_checkpoint()
            load.append(time.perf_counter() - t0)
        size = sum(p.stat().st_size for p in written.iterdir())
    params = sum(p.numel() for p in model.parameters())
    return {"params": params, "bytes": size, "save_s": min(save), "load_s": min(load)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--configs", default="digits,cifar10_ddpm")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        npz = Path(folder) / "shapes.npz"
        np.savez(npz, arr_0=shapes_array())
        overrides = tiny_overrides(
            npz,
            f"train.steps={args.steps}",
            "train.checkpoint_every=1",
            "train.keep_checkpoints=2",
            "model.dropout=0.1",
            "data.random_flip=true",
        )
        report = kill_test(Path(folder), overrides, args.kills, args.seed, forced=FORCED)
    print(
        "| kills (random) | inside checkpoint writes | forced kills | runs | recovered "
        "bit-identical | launches | seconds |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(
        f"| {report.kills} | {report.inside_checkpoint_writes} | {report.forced} | "
        f"{report.runs} | {report.recovered} | {report.launches} | {report.seconds:.0f} |"
    )
    for mismatch in report.mismatches:
        print("MISMATCH", mismatch)
    print()
    print("| config | parameters | checkpoint bytes | save s (fsync) | load s (SHA-256 checked) |")
    print("| --- | --- | --- | --- | --- |")
    for name in args.configs.split(","):
        cost = checkpoint_cost(name)
        print(
            f"| {name} | {cost['params'] / 1e6:.2f}M | {cost['bytes'] / 2**20:.1f} MiB | "
            f"{cost['save_s']:.3f} | {cost['load_s']:.3f} |"
        )


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
