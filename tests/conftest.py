"""Shared fixtures: a tiny data set of simple shapes and a tiny run configuration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ddpmkit.config import RunConfig, resolve_config

# A U-Net of a few thousand parameters on 8×8 images: every training step takes milliseconds.
TINY = [
    "data.image_size=8",
    "model.channel_mults=1,2",
    "model.base_channels=8",
    "model.norm_groups=4",
    "model.blocks_per_resolution=1",
    "model.attention=none,none",
    "model.mid_attention=none",
    "model.dropout=0",
    "diffusion.num_steps=50",
    "sample.num_samples=4",
    "train.batch_size=16",
    "train.log_every=1",
    "train.warmup_steps=2",
    "train.sample_every=0",
    "train.checkpoint_every=0",
]


def shapes_array(n: int = 256, size: int = 8) -> np.ndarray:
    """``n`` uint8 NHWC grayscale images cycling through four shapes: square, vertical bar,
    horizontal bar, diagonal (white on black)."""
    images = np.zeros((n, size, size, 1), np.uint8)
    lo, hi = size // 4, size - size // 4
    mid = size // 2
    for i in range(n):
        kind = i % 4
        if kind == 0:
            images[i, lo:hi, lo:hi] = 255
        elif kind == 1:
            images[i, :, mid - 1 : mid + 1] = 255
        elif kind == 2:
            images[i, mid - 1 : mid + 1, :] = 255
        else:
            images[i, np.arange(size), np.arange(size)] = 255
    return images


@pytest.fixture(autouse=True)
def data_cache_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Each test has its own ddpmkit cache (never the user's ~/.cache), inherited by the
    processes it starts; returns the folder of its decoded data sets."""
    path = tmp_path_factory.mktemp("ddpmkit-cache")
    monkeypatch.setenv("DDPMKIT_CACHE", str(path))
    return path / "data"


@pytest.fixture(scope="session")
def shapes_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "shapes.npz"
    np.savez(path, arr_0=shapes_array())
    return path


def tiny_overrides(npz: Path, *extra: str) -> list[str]:
    return [f"data.source={npz}", *TINY, *extra]


def tiny_config(npz: Path, *extra: str) -> RunConfig:
    return resolve_config(overrides=tiny_overrides(npz, *extra))


def train_run(out: Path, overrides: list[str], data: str | None = None):
    """Train as ``ddpm train --out OUT [--data DATA] OVERRIDES`` does, through the library entry
    points its handler calls; returns the :class:`~ddpmkit.train.TrainResult`."""
    from ddpmkit.train import Trainer, prepare_run

    config, run_dir = prepare_run(None, list(overrides), data, out)
    return Trainer(config, run_dir, progress=False).train()


def train_tiny(npz: Path, run: Path, *extra: str, resume: bool = False):
    """A :class:`~ddpmkit.train.Trainer` of :func:`tiny_config` on ``npz`` into ``run``, after
    its ``train()``."""
    from ddpmkit.train import Trainer

    trainer = Trainer(tiny_config(npz, *extra), run, resume=resume, progress=False)
    trainer.train()
    return trainer


def read_metrics(run_dir: Path) -> list[dict]:
    text = (run_dir / "metrics.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def temp_files(folder: Path) -> list[Path]:
    """Leftovers of atomic writes anywhere under ``folder``."""
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and leave the other core to whoever needs it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def ddpm_launcher(processes: int, program: tuple[str, ...] = ("-m", "ddpmkit.cli")) -> list[str]:
    """The command that starts ``program`` (``ddpm`` by default) as a user would: plainly for
    one process, through ``python -m torch.distributed.run --standalone`` for several."""
    import sys

    if processes == 1:
        return [sys.executable, *program]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(processes),
        *program,
    ]


def run_two_processes(target, args_for_port, timeout_s: float) -> None:
    """Run ``target(rank, *args_for_port(port))`` in 2 spawned processes with a free local port;
    fail (killing them) if they do not finish within ``timeout_s``."""
    import socket
    import time

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    context = mp.start_processes(
        target, args=args_for_port(port), nprocs=2, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"a process of {target.__name__} hung")
