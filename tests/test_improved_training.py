"""Training with learned variances / importance sampling, and `ddpm nll`. (Several processes:
tests/test_distributed.py.)"""

import json

import pytest

from conftest import tiny_overrides, train_run
from ddpmkit.cli import main
from ddpmkit.config import resolve_config
from ddpmkit.evaluation.nll import run_nll
from ddpmkit.rundir import RunDir
from ddpmkit.train import Trainer


@pytest.mark.slow
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


@pytest.mark.slow
def test_nll_command_prints_and_writes_json(shapes_npz, tmp_path, capsys):
    run = tmp_path / "run"
    args = tiny_overrides(
        shapes_npz, "variance=learned_range", "loss=hybrid", "train.steps=30", "train.lr=5e-3"
    )
    train_run(run, args)
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
    _, written = run_nll(run, n=40, batch_size=16, out=tmp_path / "again.json", progress=False)
    assert written == tmp_path / "again.json"
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["bits_per_dim"] == report["bits_per_dim"]
    capsys.readouterr()
    assert main(["nll", str(run), "--data", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ddpm nll: error:")
