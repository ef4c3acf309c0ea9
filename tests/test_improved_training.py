"""Training with learned variances / importance sampling, `ddpm nll`, and DDP on CPU."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import tiny_overrides
from ddpmkit.checkpoint import load_extra_tensors
from ddpmkit.cli import main
from ddpmkit.config import resolve_config
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
    extra = load_extra_tensors(tmp_path / "run")
    assert int(extra["timesteps.counts"].sum()) == 12 * 16  # every (t, loss) pair recorded
    more = resolve_config(None, [*overrides, "train.steps=14"])
    resumed = Trainer(more, tmp_path / "run", resume=True, progress=False)
    assert int(resumed.timestep_sampler.counts.sum()) == 12 * 16
    resumed.train()
    assert int(load_extra_tensors(tmp_path / "run")["timesteps.counts"].sum()) == 14 * 16


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


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on PATH")
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
        *tiny_overrides(shapes_npz, "train.steps=6", "train.checkpoint_every=3"),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((run / "state.json").read_text())["step"] == 6
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4, 5, 6]  # rank 0 only
    assert (run / "samples" / "step_000006.png").is_file()
