"""The Trainer on a tiny data set of shapes: loss, EMA, learning rate, run directory, resume after
SIGINT/SIGTERM at any point of a step, the non-finite guard, gradient accumulation and clipping,
on both the float32 and the bfloat16-autocast path."""

from __future__ import annotations

import json
import math
import os
import signal
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import read_metrics, temp_files, tiny_config, tiny_overrides
from ddpmkit.config import resolve_config
from ddpmkit.diffusion import GaussianDiffusion
from ddpmkit.errors import ConfigError, RunDirError
from ddpmkit.nn import UNet
from ddpmkit.rundir import RunDir
from ddpmkit.train import loop as train_loop
from ddpmkit.train import precision as train_precision
from ddpmkit.train.batches import TrainingBatches
from ddpmkit.training import (
    Trainer,
    TrainingDiverged,
    TrainingInterrupted,
    ema_decay,
    learning_rate,
    update_ema,
)

pytestmark = pytest.mark.usefixtures("one_thread")

RUN_FILES = {"config.json", "checkpoints", "metrics.jsonl", "samples"}
CHECKPOINT_FILES = {
    "model.safetensors",
    "ema.safetensors",
    "optimizer.safetensors",
    "train_state.safetensors",
    "state.json",
    "manifest.json",
}


def train(config, run_dir, resume=False):
    return Trainer(config, run_dir, resume=resume, progress=False).train()


def latest(run_dir) -> Path:
    run = RunDir(run_dir)
    return run.checkpoint_path(run.latest_step())


def saved_step(run_dir) -> int:
    return json.loads((latest(run_dir) / "state.json").read_text())["step"]


def saved(run_dir, name) -> dict[str, torch.Tensor]:
    return load_file(str(latest(run_dir) / f"{name}.safetensors"))


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def assert_same_run(a, b):
    """Bit-identical weights, EMA and optimizer state, and the same logged losses."""
    for name in ("model", "ema", "optimizer"):
        assert_same_tensors(saved(a, name), saved(b, name))
    assert [r["loss"] for r in read_metrics(a)] == [r["loss"] for r in read_metrics(b)]


@pytest.fixture(params=["float32", "bfloat16"])
def precision(request, monkeypatch):
    """Both numeric paths, whatever this CPU has: bf16 autocast forced on, or amp off."""
    if request.param == "bfloat16":
        monkeypatch.setattr(train_precision, "bf16_autocast_supported", lambda device: True)
        return ("train.amp=true",)
    return ("train.amp=false",)


@pytest.fixture
def interactive_sigint(request):
    """A process started in the background (CI, nohup, `&`) inherits SIGINT as ignored: give a
    test the interactive Ctrl-C behaviour it is about, and put the inherited one back after."""
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, inherited))


# ---------------------------------------------------------------------- pure schedules
def test_ema_warm_up_keeps_the_closed_form_share_of_the_start():
    """With the warm-up decay d_j = (1 + j)/(10 + j), the share of the initial weights left after
    updates j = 0..k is ∏ d_j = 9!·(k + 1)!/(k + 10)! (a telescoping product, computed here with
    log-gamma), until d_j reaches the configured decay; without warm-up it is decay^(k+1)."""
    import math

    model = torch.nn.Linear(1, 1, bias=False)
    for warmup in (True, False):
        ema = torch.nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            model.weight.fill_(0.0)
            ema.weight.fill_(1.0)
        for k in range(60):
            update_ema(ema, model, ema_decay(k, 0.995, warmup))
            if warmup:
                share = math.exp(math.lgamma(10) + math.lgamma(k + 2) - math.lgamma(k + 11))
            else:
                share = 0.995 ** (k + 1)
            assert ema.weight.item() == pytest.approx(share, rel=1e-5), (warmup, k)
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


def test_learning_rate_linear_decay_to_zero_by_steps_and_by_time():
    tc = resolve_config(
        overrides=[
            "train.lr=2",
            "train.warmup_steps=4",
            "train.steps=104",
            "train.lr_schedule=linear",
        ]
    ).train
    assert [learning_rate(k, tc) for k in range(4)] == pytest.approx([0.5, 1.0, 1.5, 2.0])
    # a straight line from lr at the end of warm-up to 0 at the last step: 2·(1 − (k − 4)/100)
    for k, expected in ((4, 2.0), (29, 1.5), (54, 1.0), (79, 0.5), (103, 0.02)):
        assert learning_rate(k, tc) == pytest.approx(expected)
    # the time used leads when it runs ahead of the steps: 80 % of the time leaves 20 % of lr
    assert learning_rate(10, tc, time_fraction=0.8) == pytest.approx(0.4)
    assert learning_rate(10, tc, time_fraction=1.0) == 0.0


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
    assert saved_step(tmp_path / "run") == result.step
    records = read_metrics(tmp_path / "run")
    assert records[-1]["step"] == result.step
    assert records[-1]["lr"] < 0.05 * config.train.lr  # the cosine decay ran out with the time
    with pytest.raises(ConfigError, match="time_limit_min"):
        tiny_config(shapes_npz, "train.time_limit_min=-1")


# ---------------------------------------------------------------------- training
def test_training_lowers_the_loss(shapes_npz, tmp_path, precision):
    """The loop on Ho et al.'s unweighted ε loss, where the threshold below was measured (the
    default recipe's P2-weighted v loss starts lower and falls by a smaller factor)."""
    config = tiny_config(
        shapes_npz,
        "diffusion.schedule=linear",
        "diffusion.prediction=eps",
        "diffusion.loss_weight=none",
        "train.steps=40",
        "train.lr=5e-3",
        "train.warmup_steps=5",
        "train.log_every=10",
        *precision,
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
        shapes_npz, "train.steps=10", "train.sample_every=4", "train.checkpoint_every=3"
    )
    result = train(config, run)
    assert {p.name for p in run.iterdir()} == RUN_FILES
    assert temp_files(run) == []
    assert result.run_dir == run and result.step == 10
    # checkpoints at 3, 6, 9 and the end; the default keeps the newest 3
    assert RunDir(run).checkpoint_steps() == [6, 9, 10]
    assert {p.name for p in latest(run).iterdir()} == CHECKPOINT_FILES
    assert saved_step(run) == 10
    assert RunDir(run).read_config_dict() == json.loads(config.to_json())

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
        assert math.isfinite(r["loss"]) and r["images_per_s"] > 0 and r["grad_norm"] > 0
        assert "skipped_steps" not in r
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
        model, ema = saved(run, "model"), saved(run, "ema")
        changed = [k for k in model if not torch.equal(model[k], init[k])]
        assert changed  # the step did move the weights
        for key in model:
            expected = d0 * init[key] + (1 - d0) * model[key]
            assert torch.allclose(ema[key], expected, atol=1e-6), key


def test_fresh_trainer_on_an_existing_run_asks_for_resume(shapes_npz, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(shapes_npz, "train.steps=2"), run)
    before = (latest(run) / "model.safetensors").read_bytes()
    with pytest.raises(RunDirError) as info:
        Trainer(tiny_config(shapes_npz, "train.steps=4"), run, progress=False)
    assert "already holds a run at step 2" in str(info.value)
    assert f"--resume {run}" in str(info.value)
    assert (latest(run) / "model.safetensors").read_bytes() == before


def test_resume_needs_a_run(shapes_npz, tmp_path):
    with pytest.raises(RunDirError, match="nothing to resume"):
        Trainer(tiny_config(shapes_npz), tmp_path / "empty", resume=True, progress=False)


def test_a_run_stopped_before_its_first_checkpoint_resumes_from_its_config(shapes_npz, tmp_path):
    """SIGTERM before the first checkpoint: config.json is there, and --resume starts it over."""
    run = tmp_path / "run"
    config = tiny_config(shapes_npz, "train.steps=4")
    RunDir(run).write_config(config)
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 9}\n{"step": 2, "lo')
    result = train(config, run, resume=True)
    assert result.step == 4 and [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4]
    train(config, tmp_path / "straight")
    assert_same_run(run, tmp_path / "straight")


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
    saved_config = RunDir(run).read_config_dict()

    # what `ddpm train --resume RUN train.steps=20` does
    config = resolve_config(overrides=["train.steps=20"], base=RunDir(run).read_config_dict())
    result = train(config, run, resume=True)

    assert result.step == 20
    assert [r["step"] for r in read_metrics(run)] == list(range(1, 21))
    assert saved_step(run) == 20 and RunDir(run).checkpoint_steps() == [10, 20]
    for name in ("model", "ema", "optimizer"):
        with open(latest(run) / f"{name}.safetensors", "rb"):
            pass
    now = RunDir(run).read_config_dict()
    assert now["train"].pop("steps") == 20
    assert saved_config["train"].pop("steps") == 10
    assert now == saved_config  # everything else kept, seed and lr included
    assert sorted(p.name for p in (run / "samples").iterdir()) == [
        "step_000010.png",
        "step_000020.png",
    ]

    # resuming the finished run again is fine and changes nothing
    files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != "config.json"}
    again = train(config, run, resume=True)
    assert again.step == 20 and again.grid_path is None
    assert {p: p.read_bytes() for p in files} == files

    # fewer steps than the run already made is a mistake
    fewer = resolve_config(overrides=["train.steps=15"], base=RunDir(run).read_config_dict())
    with pytest.raises(ConfigError, match="already at step 20"):
        Trainer(fewer, run, resume=True, progress=False)
    assert RunDir(run).read_config_dict()["train"]["steps"] == 20


# ---------------------------------------------------------------------- exact resume
EXACT = ("train.steps=12", "model.dropout=0.1", "data.random_flip=true")


def signal_inside(monkeypatch, target, name, calls_before, signum):
    """Send ``signum`` to this process from inside the ``calls_before``-th call of
    ``target.name`` (a real signal, delivered in the middle of a step)."""
    real = getattr(target, name)
    calls = 0

    def wrapper(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == calls_before:
            os.kill(os.getpid(), signum)
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, wrapper)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize(
    ("where", "signum"),
    [
        ("forward", signal.SIGINT),  # inside training_loss, where nearly all the time goes
        ("backward", signal.SIGTERM),  # inside the optimizer step
        ("ema", signal.SIGINT),
        ("data", signal.SIGTERM),  # while the batch of the next step is drawn
    ],
)
@pytest.mark.slow
def test_a_signal_anywhere_in_a_step_resumes_bit_for_bit(
    shapes_npz, tmp_path, monkeypatch, precision, interactive_sigint, where, signum
):
    """Uninterrupted vs. stopped by a real signal in step 5 and resumed: identical weights, EMA,
    optimizer moments and losses, with dropout and random flips drawing random numbers."""
    config = tiny_config(shapes_npz, *EXACT, *precision)
    train(config, tmp_path / "straight")
    targets = {
        "forward": (GaussianDiffusion, "training_loss"),
        "backward": (torch.optim.AdamW, "step"),
        "ema": (train_loop, "update_ema"),
        "data": (TrainingBatches, "next"),
    }
    signal_inside(monkeypatch, *targets[where], calls_before=5, signum=signum)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    run = tmp_path / "stopped"
    with pytest.raises(TrainingInterrupted) as info:
        train(config, run)
    monkeypatch.undo()
    # the step in progress is completed, then saved: nothing half-done, nothing lost
    assert info.value.step == 5 and saved_step(run) == 5
    assert info.value.exit_code == 128 + signum
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
    optimizer = saved(run, "optimizer")
    assert {float(v) for k, v in optimizer.items() if k.endswith(".step")} == {5.0}

    if precision == ("train.amp=true",):
        monkeypatch.setattr(train_precision, "bf16_autocast_supported", lambda device: True)
    train(config, run, resume=True)
    assert [r["step"] for r in read_metrics(run)] == list(range(1, 13))
    assert_same_run(run, tmp_path / "straight")


def test_a_second_ctrl_c_stops_at_once(shapes_npz, tmp_path, monkeypatch, interactive_sigint):
    real = GaussianDiffusion.training_loss
    calls = 0

    def twice(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 3:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(GaussianDiffusion, "training_loss", twice)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(shapes_npz, "train.steps=10", "train.checkpoint_every=1"), run)
    assert saved_step(run) == 2  # the last checkpoint written is intact


def test_another_seed_gives_another_run(shapes_npz, tmp_path):
    train(tiny_config(shapes_npz, "train.steps=3"), tmp_path / "a")
    train(tiny_config(shapes_npz, "train.steps=3", "train.seed=1"), tmp_path / "b")
    assert [r["loss"] for r in read_metrics(tmp_path / "a")] != [
        r["loss"] for r in read_metrics(tmp_path / "b")
    ]


# ---------------------------------------------------------------------- the non-finite guard
def poison(monkeypatch, bad_calls: set[int], where: str):
    """Make the loss (``loss``) or one gradient (``grad``, the loss stays finite) NaN in the
    given calls of training_loss."""
    real = GaussianDiffusion.training_loss
    calls = 0

    def wrapper(self, model, *args, **kwargs):
        nonlocal calls
        calls += 1
        out = real(self, model, *args, **kwargs)
        if calls in bad_calls:
            if where == "loss":
                out.loss = out.loss * float("nan")
            else:  # the next gradient of one weight becomes NaN, once
                weight = next(p for p in model.parameters() if p.requires_grad)

                def nan_once(grad):
                    handle.remove()
                    return torch.full_like(grad, float("nan"))

                handle = weight.register_hook(nan_once)
        return out

    monkeypatch.setattr(GaussianDiffusion, "training_loss", wrapper)


@pytest.mark.parametrize("where", ["loss", "grad"])
def test_a_non_finite_step_is_skipped_and_counted(shapes_npz, tmp_path, monkeypatch, where):
    poison(monkeypatch, {3, 4}, where)
    run = tmp_path / "run"
    result = train(tiny_config(shapes_npz, "train.steps=6"), run)
    assert result.step == 6 and math.isfinite(result.final_loss)
    records = read_metrics(run)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert [r.get("skipped_steps", 0) for r in records] == [0, 0, 2, 0, 0, 0]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in records)
    state = json.loads((latest(run) / "state.json").read_text())
    assert state["skipped_steps"] == 2 and state["bad_steps"] == 0
    optimizer = saved(run, "optimizer")  # the two bad batches were never applied
    assert {float(v) for k, v in optimizer.items() if k.endswith(".step")} == {6.0}
    for name in ("model", "ema"):
        assert all(torch.isfinite(v).all() for v in saved(run, name).values())


def test_too_many_bad_steps_in_a_row_stop_with_the_last_good_checkpoint(
    shapes_npz, tmp_path, monkeypatch
):
    poison(monkeypatch, set(range(5, 100)), "loss")
    run = tmp_path / "run"
    config = tiny_config(
        shapes_npz, "train.steps=20", "train.checkpoint_every=2", "train.max_bad_steps=3"
    )
    with pytest.raises(TrainingDiverged) as info:
        train(config, run)
    message = str(info.value)
    assert "3 steps in a row with a non-finite loss or gradient norm after step 4" in message
    assert f"the last good checkpoint is {RunDir(run).checkpoint_path(4)}" in message
    assert saved_step(run) == 4


# ---------------------------------------------------------------------- accumulation, clipping
def fixed_noise_loss(monkeypatch, batch: int):
    """training_loss with t and ε taken from fixed tables, in the order examples arrive, so that
    two ways of splitting a batch see the same (x0, t, ε)."""
    real = GaussianDiffusion.training_loss
    gen = torch.Generator().manual_seed(11)
    table_t = torch.randint(0, 50, (batch,), generator=gen)
    table_eps = torch.randn(batch, 1, 8, 8, generator=gen)
    seen = 0

    def wrapper(self, model, x0, t=None, generator=None, weights=None, noise=None):
        nonlocal seen
        n = len(x0)
        part = slice(seen % batch, seen % batch + n)
        seen += n
        return real(self, model, x0, t=table_t[part], noise=table_eps[part], weights=weights)

    monkeypatch.setattr(GaussianDiffusion, "training_loss", wrapper)


@pytest.mark.parametrize("accum", [2, 4])
def test_gradient_accumulation_equals_one_big_batch(shapes_npz, tmp_path, monkeypatch, accum):
    grads = {}
    for k in (1, accum):
        fixed_noise_loss(monkeypatch, 16)
        config = tiny_config(
            shapes_npz, "train.batch_size=16", f"train.grad_accum={k}", "train.amp=false"
        )
        trainer = Trainer(config, tmp_path / f"run{k}", progress=False)
        loss, norm = trainer._forward_backward()[0].tolist()
        grads[k] = (loss, norm, [p.grad.clone() for p in trainer.model.parameters()])
        monkeypatch.undo()
    (loss1, norm1, g1), (loss_k, norm_k, g_k) = grads[1], grads[accum]
    assert loss_k == pytest.approx(loss1, rel=1e-6) and norm_k == pytest.approx(norm1, rel=1e-5)
    for a, b in zip(g1, g_k, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-8)


def test_clipping_engages(shapes_npz, tmp_path, monkeypatch):
    def grads_after(clip: float):
        fixed_noise_loss(monkeypatch, 16)
        config = tiny_config(shapes_npz, f"train.grad_clip={clip}", "train.amp=false")
        trainer = Trainer(config, tmp_path / f"run{clip}", progress=False)
        _, norm = trainer._forward_backward()[0].tolist()
        monkeypatch.undo()
        return norm, [p.grad.clone() for p in trainer.model.parameters()]

    raw_norm, raw = grads_after(0)  # 0 disables clipping
    independent = math.sqrt(sum(float(g.double().pow(2).sum()) for g in raw))
    assert raw_norm == pytest.approx(independent, rel=1e-6)
    assert raw_norm > 1e-2  # so that a 1e-3 limit must engage
    norm, clipped = grads_after(1e-3)
    assert norm == pytest.approx(raw_norm, rel=1e-6)  # reported before clipping
    total = math.sqrt(sum(float(g.double().pow(2).sum()) for g in clipped))
    assert total == pytest.approx(1e-3, rel=1e-4)
    for a, b in zip(raw, clipped, strict=True):  # same direction, scaled by 1e-3 / ‖g‖
        assert torch.allclose(b, a * (1e-3 / raw_norm), rtol=1e-4, atol=1e-12)


def test_overrides_reach_the_trainer(shapes_npz, tmp_path):
    extra = ("train.steps=2", "lr=1e-3", "train.adam_beta1=0.8", "train.adam_beta2=0.95")
    config = resolve_config(overrides=tiny_overrides(shapes_npz, *extra))
    trainer = Trainer(config, tmp_path / "run", progress=False)
    group = trainer.optimizer.param_groups[0]
    assert group["betas"] == (0.8, 0.95) and group["lr"] == 1e-3
    assert trainer.data.count == 256 and trainer.data.source.images.dtype == torch.uint8
    assert trainer.start_step == 0


@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_image_once_per_epoch_split_between_processes(world):
    from ddpmkit.training import epoch_share

    for epoch in range(3):
        shares = [epoch_share(7, epoch, 50, rank, world) for rank in range(world)]
        assert sorted(torch.cat(shares).tolist()) == list(range(50))  # disjoint, complete
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert not torch.equal(epoch_share(7, 0, 50, 0, 1), epoch_share(7, 1, 50, 0, 1))
    assert not torch.equal(epoch_share(7, 0, 50, 0, 1), epoch_share(8, 0, 50, 0, 1))
