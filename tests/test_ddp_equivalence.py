"""Many processes done right, launched as users launch them (``python -m torch.distributed.run``,
gloo on the CPU): two processes with the same global batch train like one; a resumed
two-process run equals an uninterrupted one; a run resumed with another number of processes
continues with the documented semantics."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from conftest import read_metrics, tiny_overrides
from ddpmkit.rundir import RunDir

# flips on (their draws must follow the images), dropout off (a per-process global-RNG draw)
COMMON = [
    "data.random_flip=true",
    "model.dropout=0",
    "train.lr=2e-3",
    "train.warmup_steps=0",
    "train.lr_schedule=constant",  # a stopped run's schedule must not depend on its last step
]


def _train(run: Path, processes: int, *overrides: str, resume: bool = False) -> None:
    launcher = [sys.executable, "-m", "ddpmkit.cli"]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        launcher += ["--nproc_per_node", str(processes), "-m", "ddpmkit.cli"]
    where = ["--resume", str(run)] if resume else ["--out", str(run)]
    cmd = [*launcher, "train", *where, "--no-progress", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    checkpoint = RunDir(run).load_checkpoint()
    return {
        f"{which}.{k}": v
        for which in ("model", "ema")
        for k, v in checkpoint.tensors[which].items()
    }


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def _outputs(run: Path) -> torch.Tensor:
    from ddpmkit.generate import load_run

    generator = torch.Generator().manual_seed(0)
    x, t = torch.randn(32, 1, 8, 8, generator=generator), torch.arange(32) % 50
    with torch.no_grad():
        return load_run(run, device="cpu", weights="model").model(x, t)


def test_two_processes_train_like_one_with_the_same_global_batch(shapes_npz, tmp_path):
    """Global batch 16 (and 2 micro-batches of 8 per process). After one step the weights of 2
    processes equal those of 1 up to float rounding (the gradients agree). After 6 steps the
    networks compute the same function to 1e-3 while another seed differs by far more: weights
    themselves drift further apart, as AdamW divides by √v and turns the rounding differences
    of near-zero gradients (those reaching zero-initialised output convolutions) into steps of
    up to ``lr``."""
    for steps in (1, 6):
        overrides = tiny_overrides(shapes_npz, *COMMON, f"train.steps={steps}")
        _train(tmp_path / f"one-{steps}", 1, *overrides)
        _train(tmp_path / f"two-{steps}", 2, *overrides)
        _train(tmp_path / f"two-accum-{steps}", 2, *overrides, "train.grad_accum=2")
    other = tiny_overrides(shapes_npz, *COMMON, "train.steps=6", "train.seed=1")
    _train(tmp_path / "other-seed", 1, *other)
    one = _weights(tmp_path / "one-1")
    for name in ("two-1", "two-accum-1"):
        assert _max_difference(one, _weights(tmp_path / name)) < 1e-7, name
    reference = _outputs(tmp_path / "one-6")

    def relative(run: str) -> float:
        return float((_outputs(tmp_path / run) - reference).norm() / reference.norm())

    assert relative("other-seed") > 0.05
    for name in ("two-6", "two-accum-6"):
        assert relative(name) < 1e-3, name


def test_a_resumed_two_process_run_equals_an_uninterrupted_one(shapes_npz, tmp_path):
    overrides = tiny_overrides(shapes_npz, *COMMON, "train.checkpoint_every=3")
    _train(tmp_path / "straight", 2, *overrides, "train.steps=6")
    _train(tmp_path / "stopped", 2, *overrides, "train.steps=3")
    _train(tmp_path / "stopped", 2, "train.steps=6", resume=True)
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "stopped")
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = ("elapsed_s", "images_per_s")
    logged = [
        [{k: v for k, v in r.items() if k not in strip} for r in read_metrics(tmp_path / name)]
        for name in ("straight", "stopped")
    ]
    assert logged[0] == logged[1]


def test_resuming_with_another_number_of_processes_starts_the_next_epoch(shapes_npz, tmp_path):
    """2 processes for 3 steps (48 of 256 images of epoch 0), then 1 process: the step count
    continues and the new process starts epoch 1 from its beginning (README: "Multi-GPU")."""
    run = tmp_path / "run"
    overrides = tiny_overrides(shapes_npz, *COMMON, "train.checkpoint_every=3")
    _train(run, 2, *overrides, "train.steps=3")
    before = RunDir(run).load_checkpoint(files=()).state
    assert before["world_size"] == 2 and [r["epoch"] for r in before["ranks"]] == [1, 1]
    _train(run, 1, "train.steps=5", resume=True)
    after = RunDir(run).load_checkpoint(files=()).state
    assert after["step"] == 5 and after["world_size"] == 1
    (rank,) = after["ranks"]
    # epoch 1 was begun at the resume (the counter names the next epoch: 2), 2 steps of 16 in
    assert rank["epoch"] == 2 and rank["cursor"] == 32
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4, 5]


def test_the_rows_of_all_processes_and_micro_batches_draw_what_one_process_draws():
    """world × grad_accum splits of a global batch of 12: every row once, and each row's t,
    noise and flip are those of one process drawing all 12 at once."""
    from ddpmkit.batch_draws import draw_batch, global_rows

    def draws(rows):
        return draw_batch(
            seed=5,
            attempt=7,
            rows=rows,
            batch_size=12,
            image_shape=(1, 2, 2),
            num_steps=50,
            device=torch.device("cpu"),
            label_dropout=0.3,
        )

    alone = draws(range(12))
    for world, accum in ((1, 1), (2, 1), (3, 2), (2, 3), (4, 3)):
        seen = []
        for rank in range(world):
            for micro in range(accum):
                rows = global_rows(micro, accum, 12, rank, world)
                part = draws(rows)
                index = torch.tensor(list(rows))
                assert torch.equal(part.t, alone.t[index])
                assert torch.equal(part.noise, alone.noise[index])
                assert torch.equal(part.flip, alone.flip[index])
                assert torch.equal(part.drop_label, alone.drop_label[index])
                seen += list(rows)
        assert sorted(seen) == list(range(12)), (world, accum)
    other = draw_batch(
        seed=5,
        attempt=8,
        rows=range(12),
        batch_size=12,
        image_shape=(1, 2, 2),
        num_steps=50,
        device=torch.device("cpu"),
    )
    assert not torch.equal(other.noise, alone.noise)  # another step draws other noise
