"""Training with learned variances / importance sampling, `ddpm nll`, and DDP on CPU."""

import json
import os
import subprocess
import sys

import pytest

from conftest import tiny_overrides
from ddpmkit.cli import main
from ddpmkit.config import resolve_config
from ddpmkit.rundir import RunDir
from ddpmkit.training import Trainer


def test_hybrid_learned_range_with_importance_sampling_trains_and_resumes(shapes_npz, tmp_path):
    overrides = tiny_overrides(
        shapes_npz,
        "variance=learned_range",
        "loss=hybrid",
        "train.timestep_sampler=loss_second_moment",
        "train.steps=12",
        "train.checkpoint_every=6",
    )
    config = resolve_config(None, overrides)
    assert config.model.learned_variance  # derived from the diffusion's variance
    result = Trainer(config, tmp_path / "run", progress=False).train()
    assert result.step == 12
    extra = RunDir(tmp_path / "run").load_checkpoint().tensors["train_state"]
    assert int(extra["timesteps.counts"].sum()) == 12 * 16  # every (t, loss) pair recorded
    more = resolve_config(None, [*overrides, "train.steps=14"])
    resumed = Trainer(more, tmp_path / "run", resume=True, progress=False)
    assert int(resumed.state.timestep_sampler.counts.sum()) == 12 * 16
    resumed.train()
    extra = RunDir(tmp_path / "run").load_checkpoint().tensors["train_state"]
    assert int(extra["timesteps.counts"].sum()) == 14 * 16


def test_nll_command_prints_and_writes_json(shapes_npz, tmp_path, capsys):
    run = tmp_path / "run"
    args = tiny_overrides(
        shapes_npz, "variance=learned_range", "loss=hybrid", "train.steps=30", "train.lr=5e-3"
    )
    assert main(["train", "--out", str(run), "--no-progress", *args]) == 0
    capsys.readouterr()
    assert main(["nll", str(run), "--n", "40", "--batch", "16", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "bits/dim" in out and "95%" in out
    report = json.loads((run / "nll.json").read_text())
    assert report["n"] == 40 and report["num_steps"] == 50
    total = report["prior"] + report["decoder"] + report["kl_sum"]
    assert report["bits_per_dim"] == pytest.approx(total, rel=1e-9)
    assert 0 < report["bits_per_dim"] < 100 and report["ci95"] > 0
    # the same seed gives the same number; the bad-input path is one clear line
    assert (
        main(
            [
                "nll",
                str(run),
                "--n",
                "40",
                "--batch",
                "16",
                "--no-progress",
                "--out",
                str(tmp_path / "again.json"),
            ]
        )
        == 0
    )
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["bits_per_dim"] == report["bits_per_dim"]
    capsys.readouterr()
    assert main(["nll", str(run), "--data", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ddpm nll: error:")


def test_ddp_training_on_cpu_with_two_processes(shapes_npz, tmp_path):
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "ddpmkit.cli",
        "train",
        "--out",
        str(run),
        "--no-progress",
        *tiny_overrides(
            shapes_npz, "train.steps=6", "train.checkpoint_every=3", "train.grad_accum=2"
        ),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert RunDir(run).checkpoint_steps() == [3, 6]
    state = RunDir(run).load_checkpoint()
    assert state.step == 6 and state.state["world_size"] == 2
    ranks = {k.split(".")[0] for k in state.tensors["train_state"] if k.startswith("rank")}
    assert ranks == {"rank0", "rank1"}  # every process's generators are saved
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4, 5, 6]  # rank 0 only
    assert (run / "samples" / "step_000006.png").is_file()


def test_ddp_skips_a_step_that_is_non_finite_on_one_rank_only(shapes_npz, tmp_path):
    """Rank 1's loss is NaN in step 3, rank 0's is finite: both skip the update (one all-reduced
    flag) and neither hangs waiting for the other."""
    from ddp_worker import train_rank

    run = tmp_path / "ddp"
    overrides = tiny_overrides(shapes_npz, "train.steps=5")
    run_two_processes(train_rank, lambda port: (2, str(run), overrides, port, 3), 180)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert sum(r.get("skipped_steps", 0) for r in records) == 1  # rank 0 skipped it as well
    state = RunDir(run).load_checkpoint(files=())
    assert state.step == 5 and state.state["skipped_steps"] == 1


def test_sampling_split_between_processes_gives_the_images_of_one(tmp_path):
    """Per-sample seeds make image i independent of who draws it: 2 processes × their blocks
    of 7 images equal one process drawing all 7."""

    import numpy as np
    import torch

    from ddp_worker import generate_rank, stand_in_model
    from ddpmkit.diffusion import GaussianDiffusion
    from ddpmkit.generate import SampleRequest, generate
    from ddpmkit.schedules import make_schedule

    out = tmp_path / "images.npy"
    run_two_processes(generate_rank, lambda port: (2, port, str(out)), 120)
    diffusion = GaussianDiffusion(make_schedule("cosine", 30), "eps", "fixed_small")
    request = SampleRequest(n=7, sampler="ddpm", steps=6, seed=3, batch_size=2)
    alone = generate(stand_in_model, diffusion, (1, 4, 4), request, torch.device("cpu"), False)
    assert np.array_equal(np.load(out), alone.images.numpy())


def test_eval_under_torchrun_splits_the_samples_and_scores_them_once(shapes_npz, tmp_path):
    """`torchrun --nproc_per_node 2 -m ddpmkit.cli eval`: the same FID as one process."""
    run = tmp_path / "run"
    overrides = tiny_overrides(shapes_npz, "train.steps=2")
    assert main(["train", "--out", str(run), "--no-progress", *overrides]) == 0
    argv = ["eval", str(run), "--num-samples", "24", "--sampler", "ddim", "--steps", "3"]
    argv += ["--batch", "5"]
    argv += ["--features", "digits", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # both ways on one thread per process
    alone = [sys.executable, "-m", "ddpmkit.cli", *argv, "--out", str(tmp_path / "one.json")]
    done = subprocess.run(alone, capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "ddpmkit.cli", *argv, "--out", str(tmp_path / "two.json")]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    one = json.loads((tmp_path / "one.json").read_text())["results"]
    two = json.loads((tmp_path / "two.json").read_text())["results"]
    for key in ("fid", "kid_mean", "precision", "recall", "n"):
        assert two[0][key] == one[0][key], key


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
