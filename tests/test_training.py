"""The Trainer on a tiny data set of shapes: loss, EMA, learning rate, run directory, resume,
Ctrl-C and reproducibility."""

from __future__ import annotations

import json
import math
import os
import signal
import sys

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import read_metrics, temp_files, tiny_config, tiny_overrides
from ddpmkit import training
from ddpmkit.checkpoint import load_config_dict
from ddpmkit.config import resolve_config
from ddpmkit.diffusion import GaussianDiffusion
from ddpmkit.errors import ConfigError, RunDirError
from ddpmkit.nn import UNet
from ddpmkit.training import (
    Trainer,
    TrainingDiverged,
    TrainingInterrupted,
    ema_decay,
    learning_rate,
    update_ema,
)

pytestmark = pytest.mark.usefixtures("one_thread")

RUN_FILES = {
    "config.json",
    "state.json",
    "model.safetensors",
    "ema.safetensors",
    "optimizer.safetensors",
    "metrics.jsonl",
    "samples",
}


def train(config, run_dir, resume=False):
    return Trainer(config, run_dir, resume=resume, progress=False).train()


def file_step(path) -> str:
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata()["step"]


def weights(path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ---------------------------------------------------------------------- pure schedules
def test_ema_decay_warm_up_formula():
    for k in (0, 1, 5, 50, 500, 5000):
        assert ema_decay(k, 0.995, True) == min(0.995, (1 + k) / (10 + k))
        assert ema_decay(k, 0.995, False) == 0.995
    assert ema_decay(0, 0.995, True) == pytest.approx(0.1)
    assert ema_decay(10, 0.995, True) == pytest.approx(11 / 20)
    assert ema_decay(100_000, 0.995, True) == 0.995  # capped at the configured decay


def test_update_ema_is_a_convex_combination_and_copies_buffers():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    model(torch.randn(8, 3))  # moves the running statistics away from their initial values
    before = [p.clone() for p in ema.parameters()]
    update_ema(ema, model, 0.75)
    for e, b, p in zip(ema.parameters(), before, model.parameters(), strict=True):
        assert torch.allclose(e, 0.75 * b + 0.25 * p, atol=1e-7)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        assert torch.equal(e, b)
    update_ema(ema, model, 0.0)
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        assert torch.equal(e, p)


def test_learning_rate_warm_up_then_cosine():
    tc = resolve_config(overrides=["train.lr=1", "train.warmup_steps=10", "train.steps=110"]).train
    # linear warm-up reaching lr at the last warm-up step
    assert [learning_rate(k, tc) for k in range(10)] == pytest.approx(
        [(k + 1) / 10 for k in range(10)]
    )
    # cosine from lr to 0 over the remaining 100 steps
    for k in (10, 35, 60, 85, 109):
        expected = 0.5 * (1 + math.cos(math.pi * (k - 10) / 100))
        assert learning_rate(k, tc) == pytest.approx(expected)
    assert learning_rate(10, tc) == pytest.approx(1.0)
    assert learning_rate(60, tc) == pytest.approx(0.5)
    assert learning_rate(109, tc) < 0.001
    lrs = [learning_rate(k, tc) for k in range(10, 110)]
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))


def test_learning_rate_constant_and_without_warm_up():
    tc = resolve_config(
        overrides=["train.lr=0.5", "train.warmup_steps=4", "train.lr_schedule=constant"]
    ).train
    assert [learning_rate(k, tc) for k in range(6)] == pytest.approx(
        [0.125, 0.25, 0.375, 0.5, 0.5, 0.5]
    )
    assert learning_rate(10**6, tc) == 0.5
    tc = resolve_config(overrides=["train.lr=0.5", "train.warmup_steps=0"]).train
    assert learning_rate(0, tc) == 0.5


def test_learning_rate_follows_the_time_limit_when_it_runs_ahead_of_the_steps():
    tc = resolve_config(
        overrides=["train.lr=1.0", "train.warmup_steps=10", "train.steps=110"]
    ).train
    assert learning_rate(5, tc, time_fraction=0.9) == pytest.approx(0.6)  # warm-up first
    assert learning_rate(20, tc, time_fraction=0.5) == pytest.approx(0.5)
    assert learning_rate(20, tc, time_fraction=0.0) == learning_rate(20, tc)
    assert learning_rate(60, tc, time_fraction=0.1) == pytest.approx(0.5)  # steps ahead of time
    assert learning_rate(20, tc, time_fraction=1.0) == pytest.approx(0.0)


def test_a_time_limit_stops_training_with_a_checkpoint(shapes_npz, tmp_path):
    config = tiny_config(shapes_npz, "train.steps=100000", "train.time_limit_min=0.01")
    result = train(config, tmp_path / "run")
    assert 1 <= result.step < 100000
    assert 0.6 <= result.elapsed_s <= 5.0
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["step"] == result.step
    records = read_metrics(tmp_path / "run")
    assert records[-1]["step"] == result.step
    assert records[-1]["lr"] < 0.05 * config.train.lr  # the cosine decay ran out with the time
    with pytest.raises(ConfigError, match="time_limit_min"):
        tiny_config(shapes_npz, "train.time_limit_min=-1")


# ---------------------------------------------------------------------- training
def test_training_lowers_the_loss(shapes_npz, tmp_path):
    config = tiny_config(
        shapes_npz, "train.steps=40", "train.lr=5e-3", "train.warmup_steps=5", "train.log_every=10"
    )
    result = train(config, tmp_path / "run")
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == [10, 20, 30, 40]
    losses = [r["loss"] for r in records]
    # measured: the last interval's mean is about a quarter of the first one's
    assert losses[-1] < 0.5 * losses[0], losses
    assert all(loss < losses[0] for loss in losses[1:]), losses
    assert result.step == 40 and math.isfinite(result.final_loss)


def test_run_directory_contents(shapes_npz, tmp_path):
    run = tmp_path / "run"
    config = tiny_config(
        shapes_npz, "train.steps=10", "train.sample_every=4", "train.checkpoint_every=5"
    )
    result = train(config, run)
    assert {p.name for p in run.iterdir()} == RUN_FILES
    assert temp_files(run) == []
    assert result.run_dir == run and result.step == 10
    assert json.loads((run / "state.json").read_text())["step"] == 10
    for name in ("model", "ema", "optimizer"):
        assert file_step(run / f"{name}.safetensors") == "10"
    assert load_config_dict(run) == json.loads(config.to_json())

    grids = sorted(p.name for p in (run / "samples").iterdir())
    assert grids == ["step_000004.png", "step_000008.png", "step_000010.png"]
    assert result.grid_path == run / "samples" / "step_000010.png"
    with Image.open(result.grid_path) as image:
        image.load()
        assert image.mode == "L" and image.width > 8

    records = read_metrics(run)
    assert [r["step"] for r in records] == list(range(1, 11))
    for r in records:
        assert r["lr"] == pytest.approx(learning_rate(r["step"] - 1, config.train))
        assert math.isfinite(r["loss"]) and r["images_per_s"] > 0
        quartiles = [r[key] for key in r if key.startswith("loss_t_q")]
        assert 1 <= len(quartiles) <= 4
    elapsed = [r["elapsed_s"] for r in records]
    assert elapsed == sorted(elapsed)


def test_ema_follows_the_warm_up_in_training(shapes_npz, tmp_path):
    """After one optimizer step the EMA is (1 − d₀)·θ₁ + d₀·θ₀ with d₀ = min(decay, 1/10)."""
    for extra, d0 in ((["train.ema_warmup=true"], 0.1), (["train.ema_warmup=false"], 0.3)):
        run = tmp_path / f"run{d0}"
        config = tiny_config(shapes_npz, "train.steps=1", "train.ema_decay=0.3", *extra)
        train(config, run)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.train.seed)  # the Trainer's initialisation
            init = UNet(config.model).state_dict()
        model = weights(run / "model.safetensors")
        ema = weights(run / "ema.safetensors")
        changed = [k for k in model if not torch.equal(model[k], init[k])]
        assert changed  # the step did move the weights
        for key in model:
            expected = d0 * init[key] + (1 - d0) * model[key]
            assert torch.allclose(ema[key], expected, atol=1e-6), key


def test_fresh_trainer_on_an_existing_run_asks_for_resume(shapes_npz, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(shapes_npz, "train.steps=2"), run)
    before = (run / "model.safetensors").read_bytes()
    with pytest.raises(RunDirError) as info:
        Trainer(tiny_config(shapes_npz, "train.steps=4"), run, progress=False)
    assert "already holds a run at step 2" in str(info.value)
    assert f"--resume {run}" in str(info.value)
    assert (run / "model.safetensors").read_bytes() == before


def test_resume_needs_a_checkpoint(shapes_npz, tmp_path):
    with pytest.raises(RunDirError, match="nothing to resume"):
        Trainer(tiny_config(shapes_npz), tmp_path / "empty", resume=True, progress=False)


def test_fresh_run_drops_metrics_of_a_run_that_died_before_its_first_checkpoint(
    shapes_npz, tmp_path
):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 9}\n{"step": 2, "lo')
    train(tiny_config(shapes_npz, "train.steps=2"), run)
    assert [r["step"] for r in read_metrics(run)] == [1, 2]
    assert all(r["loss"] < 9 for r in read_metrics(run))


def test_resume_continues_the_step_count_and_keeps_the_config(shapes_npz, tmp_path):
    run = tmp_path / "run"
    first = tiny_config(shapes_npz, "train.steps=10", "train.seed=3", "train.lr=4e-3")
    train(first, run)
    saved = load_config_dict(run)

    # what `ddpm train --resume RUN train.steps=20` does
    config = resolve_config(overrides=["train.steps=20"], base=load_config_dict(run))
    result = train(config, run, resume=True)

    assert result.step == 20
    assert [r["step"] for r in read_metrics(run)] == list(range(1, 21))
    state = json.loads((run / "state.json").read_text())
    assert state["step"] == 20
    for name in ("model", "ema", "optimizer"):
        assert file_step(run / f"{name}.safetensors") == "20"
    now = load_config_dict(run)
    assert now["train"].pop("steps") == 20
    assert saved["train"].pop("steps") == 10
    assert now == saved  # everything else kept, seed and lr included
    assert sorted(p.name for p in (run / "samples").iterdir()) == [
        "step_000010.png",
        "step_000020.png",
    ]

    # resuming the finished run again is fine and changes nothing
    files = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    again = train(config, run, resume=True)
    assert again.step == 20 and again.grid_path is None
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == files

    # fewer steps than the run already made is a mistake
    fewer = resolve_config(overrides=["train.steps=15"], base=load_config_dict(run))
    with pytest.raises(ConfigError, match="already at step 20"):
        Trainer(fewer, run, resume=True, progress=False)
    assert load_config_dict(run)["train"]["steps"] == 20


def test_ctrl_c_saves_a_checkpoint_of_the_current_step(shapes_npz, tmp_path, monkeypatch):
    calls = 0
    next_batch = Trainer._next_batch

    def interrupt_at_step_4(self, size):
        nonlocal calls
        calls += 1
        if calls == 4:  # three steps are done, the fourth is starting
            raise KeyboardInterrupt
        return next_batch(self, size)

    monkeypatch.setattr(Trainer, "_next_batch", interrupt_at_step_4)
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as info:
        train(tiny_config(shapes_npz, "train.steps=10"), run)
    assert info.value.step == 3 and info.value.run_dir == run
    assert "checkpoint saved" in str(info.value)
    assert json.loads((run / "state.json").read_text())["step"] == 3
    for name in ("model", "ema", "optimizer"):
        assert file_step(run / f"{name}.safetensors") == "3"
    optimizer = weights(run / "optimizer.safetensors")
    steps = {float(v) for k, v in optimizer.items() if k.endswith(".step")}
    assert steps == {3.0}  # AdamW took exactly three steps
    assert temp_files(run) == []


@pytest.mark.skipif(sys.platform == "win32", reason="sends itself a POSIX SIGINT")
def test_resumed_training_is_reproducible(shapes_npz, tmp_path, monkeypatch, request):
    """Uninterrupted vs. interrupted by a real SIGINT and resumed: the same losses and weights.

    The interrupt arrives while the optimizer and EMA are being updated, in the middle of an
    epoch (256 images, 16 per batch), with dropout and random flips drawing random numbers."""
    extra = ("train.steps=20", "model.dropout=0.1", "data.random_flip=true")
    config = tiny_config(shapes_npz, *extra)
    train(config, tmp_path / "a")
    train(tiny_config(shapes_npz, *extra), tmp_path / "b")
    losses_a = [r["loss"] for r in read_metrics(tmp_path / "a")]
    # two runs with the same seed are identical
    assert [r["loss"] for r in read_metrics(tmp_path / "b")] == losses_a
    assert_same_tensors(
        weights(tmp_path / "a" / "model.safetensors"), weights(tmp_path / "b" / "model.safetensors")
    )

    calls = 0
    real_update = training.update_ema

    def sigint_during_step_10(ema, model, decay):
        nonlocal calls
        calls += 1
        if calls == 10:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, half-way through the update
        real_update(ema, model, decay)

    monkeypatch.setattr(training, "update_ema", sigint_during_step_10)
    # a process started in the background (CI, nohup, `&`) inherits SIGINT as ignored: give this
    # test the interactive Ctrl-C behaviour it is about, and put the inherited one back after
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, inherited))
    handler = signal.getsignal(signal.SIGINT)
    run = tmp_path / "c"
    with pytest.raises(TrainingInterrupted) as info:
        train(config, run)
    monkeypatch.setattr(training, "update_ema", real_update)
    assert info.value.step == 10  # the tenth step was completed, not lost nor half-done
    assert signal.getsignal(signal.SIGINT) is handler  # restored after the deferral

    train(config, run, resume=True)
    records = read_metrics(run)
    assert [r["step"] for r in records] == list(range(1, 21))
    assert [r["loss"] for r in records] == losses_a
    for name in ("model", "ema"):
        assert_same_tensors(
            weights(run / f"{name}.safetensors"), weights(tmp_path / "a" / f"{name}.safetensors")
        )


def test_another_seed_gives_another_run(shapes_npz, tmp_path):
    train(tiny_config(shapes_npz, "train.steps=3"), tmp_path / "a")
    train(tiny_config(shapes_npz, "train.steps=3", "train.seed=1"), tmp_path / "b")
    assert [r["loss"] for r in read_metrics(tmp_path / "a")] != [
        r["loss"] for r in read_metrics(tmp_path / "b")
    ]


def test_diverging_loss_stops_with_a_clear_error(shapes_npz, tmp_path, monkeypatch):
    calls = 0
    real_loss = GaussianDiffusion.training_loss

    def nan_at_step_3(self, *args, **kwargs):
        nonlocal calls
        calls += 1
        out = real_loss(self, *args, **kwargs)
        if calls == 3:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(GaussianDiffusion, "training_loss", nan_at_step_3)
    run = tmp_path / "run"
    config = tiny_config(shapes_npz, "train.steps=10", "train.checkpoint_every=2")
    with pytest.raises(TrainingDiverged, match="the loss became nan at step 3"):
        train(config, run)
    assert json.loads((run / "state.json").read_text())["step"] == 2  # last checkpoint intact


def test_overrides_reach_the_trainer(shapes_npz, tmp_path):
    extra = ("train.steps=2", "lr=1e-3", "train.adam_beta1=0.8", "train.adam_beta2=0.95")
    config = resolve_config(overrides=tiny_overrides(shapes_npz, *extra))
    trainer = Trainer(config, tmp_path / "run", progress=False)
    group = trainer.optimizer.param_groups[0]
    assert group["betas"] == (0.8, 0.95) and group["lr"] == 1e-3
    assert len(trainer.images) == 256 and trainer.images.dtype == torch.uint8
    assert trainer.start_step == 0


def test_rng_state_of_the_first_layout_still_loads(shapes_npz, tmp_path):
    """Checkpoints written before the data order was saved: [data size, data, noise]."""
    trainer = Trainer(tiny_config(shapes_npz), tmp_path / "run", progress=False)
    data, noise = trainer.data_gen.get_state(), trainer.noise_gen.get_state()
    old = torch.cat([torch.tensor([data.numel()]).view(torch.uint8), data, noise])
    expected = torch.rand(3, generator=trainer.data_gen), torch.rand(3, generator=trainer.noise_gen)
    trainer._set_rng_state(old)
    assert torch.equal(torch.rand(3, generator=trainer.data_gen), expected[0])
    assert torch.equal(torch.rand(3, generator=trainer.noise_gen), expected[1])
    # and the current layout round-trips, data order included
    trainer._next_batch(5)
    state = trainer._rng_state()
    order, cursor = trainer._order.clone(), trainer._cursor
    batch = trainer._next_batch(7)
    trainer._order, trainer._cursor = torch.empty(0, dtype=torch.long), 0
    trainer._set_rng_state(state)
    assert torch.equal(trainer._order, order) and trainer._cursor == cursor == 5
    assert torch.equal(trainer._next_batch(7), batch)
