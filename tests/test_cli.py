"""The `ddpm` command, run in-process through ``ddpmkit.cli.main`` (and once as a subprocess)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY, read_metrics
from ddpmkit import __version__
from ddpmkit.cli import main
from ddpmkit.cli.parser import build_parser as _build_parser
from ddpmkit.rundir import RunDir
from ddpmkit.train.batches import TrainingBatches

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run_dir(shapes_npz, tmp_path_factory) -> Path:
    """A tiny run trained through the command line."""
    run = tmp_path_factory.mktemp("cli") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main(
            ["train", "--data", str(shapes_npz), "--out", str(run), "--no-progress"]
            + [*TINY, "train.steps=6"]
        )
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    return run


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(path)
    return path


def one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"ddpm {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


# ---------------------------------------------------------------------- help
def test_ddpm_help_as_a_real_command():
    script = Path(sys.executable).parent / "ddpm"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "ddpmkit.cli"]
    result = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for word in ("usage: ddpm", "train", "sample", "forward", "examples:"):
        assert word in result.stdout


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = _build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_command_is_listed(capsys):
    assert set(subparsers()) == {
        "train",
        "sample",
        "nll",
        "eval",
        "forward",
        "plot",
        "compare",
        "inpaint",
        "edit",
        "export",
        "import",
        "fid",
        "cache",
    }
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name in subparsers():
        assert name in out
    assert main([]) == 2  # no command: the help, and a failing exit code
    assert "usage: ddpm" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"ddpmkit {__version__}"


EXPECTED_OPTIONS = {
    "train": {"--config", "--data", "--out", "--resume", "--no-progress"},
    "sample": {
        "--n",
        "--sampler",
        "--steps",
        "--eta",
        "--seed",
        "--batch",
        "--out",
        "--gif",
        "--step",
    }
    | {"--npz", "--weights", "--no-clip", "--device", "--no-progress"},
    "forward": {"--schedule", "--steps", "--num", "--size", "--gray", "--seed", "--out"},
    "inpaint": {"--image", "--mask", "--method", "--jump", "--resample", "--sampler", "--steps"}
    | {"--seed", "--batch", "--out", "--npz", "--step", "--weights", "--device"},
    "edit": {"--image", "--strength", "--eta", "--sampler", "--steps", "--seed", "--batch"},
}


@pytest.mark.parametrize("command", sorted(EXPECTED_OPTIONS))
def test_help_of_each_command_lists_every_option(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: ddpm {command}")
    actions = [a for a in subparsers()[command]._actions if a.option_strings]
    options = {s for a in actions for s in a.option_strings} - {"-h", "--help"}
    assert EXPECTED_OPTIONS[command] <= options
    for action in actions:
        assert action.help and action.help != argparse.SUPPRESS, action.option_strings
        for option in action.option_strings:
            assert option in out, option


# ---------------------------------------------------------------------- train → sample
def test_train_writes_a_complete_run(run_dir, capsys):
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.json", "checkpoints", "metrics.jsonl", "samples"} <= names
    checkpoint = run_dir / "checkpoints" / "step_0000006"
    assert {"model.safetensors", "ema.safetensors", "optimizer.safetensors"} <= {
        p.name for p in checkpoint.iterdir()
    }
    assert json.loads((checkpoint / "state.json").read_text())["step"] == 6
    config = json.loads((run_dir / "config.json").read_text())
    assert config["train"]["steps"] == 6 and config["model"]["channel_mults"] == [1, 2]
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2, 3, 4, 5, 6]


def test_sample_writes_grid_npz_and_gif(run_dir, tmp_path, capsys):
    grid, npz, gif = tmp_path / "grid.png", tmp_path / "out.npz", tmp_path / "denoise.gif"
    argv = ["sample", str(run_dir), "--n", "5", "--batch", "3", "--seed", "1", "--no-progress"]
    assert main([*argv, "--out", str(grid), "--npz", str(npz), "--gif", str(gif)]) == 0
    out = capsys.readouterr().out
    assert "5 images" in out and "from step 6" in out
    for path in (grid, npz, gif):
        assert f"wrote {path}" in out

    with Image.open(grid) as image:
        image.load()
        assert image.format == "PNG" and image.mode == "L"
        assert image.width >= 3 * 8 and image.height >= 2 * 8
    with np.load(npz) as data:
        assert data.files == ["arr_0"]
        images = data["arr_0"]
    assert images.dtype == np.uint8 and images.shape == (5, 8, 8, 1)
    assert images.std() > 0
    with Image.open(gif) as image:
        assert image.format == "GIF" and image.is_animated
        assert image.n_frames >= 10
        first = np.asarray(image.convert("L"), dtype=float)
        image.seek(image.n_frames - 1)
        last = np.asarray(image.convert("L"), dtype=float)
    assert not np.array_equal(first, last)  # from noise to the samples


def test_step_picks_a_checkpoint(shapes_npz, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--data", str(shapes_npz), "--out", str(run), "--no-progress"]
    assert main([*argv, *TINY, "train.steps=6", "train.checkpoint_every=3"]) == 0
    outputs = {}
    for step in ("3", "6"):
        path = tmp_path / f"s{step}.npz"
        sample = ["sample", str(run), "--n", "2", "--steps", "5", "--step", step]
        assert main([*sample, "--npz", str(path), "--out", str(tmp_path / "g.png")]) == 0
        assert f"from step {step}" in capsys.readouterr().out
        with np.load(path) as data:
            outputs[step] = data["arr_0"]
    assert not np.array_equal(outputs["3"], outputs["6"])
    for command in (["sample", "--n", "2"], ["nll", "--n", "2"], ["eval", "--n", "2"]):
        assert main([command[0], str(run), *command[1:], "--step", "4", "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [
            f"ddpm {command[0]}: error: '{run}' has no checkpoint of step 4 (it has 3, 6)"
        ]


def test_sample_with_the_same_seed_is_identical(run_dir, tmp_path, capsys):
    def draw(name, seed, *extra):
        path = tmp_path / name
        argv = ["sample", str(run_dir), "--n", "4", "--seed", str(seed), "--no-progress"]
        assert main([*argv, "--npz", str(path), "--out", str(tmp_path / "g.png"), *extra]) == 0
        with np.load(path) as data:
            return data["arr_0"]

    a = draw("a.npz", 7)
    assert np.array_equal(a, draw("b.npz", 7))
    assert not np.array_equal(a, draw("c.npz", 8))
    d = draw("d.npz", 7, "--sampler", "ddim", "--steps", "10")
    assert np.array_equal(d, draw("e.npz", 7, "--sampler", "ddim", "--steps", "10"))
    assert not np.array_equal(a, d)


def test_sample_default_grid_path(run_dir, capsys):
    argv = ["sample", str(run_dir), "--n", "2", "--sampler", "ddim", "--steps", "5"]
    assert main([*argv, "--seed", "3", "--no-progress"]) == 0
    path = run_dir / "samples" / "sample-ddim5-seed3.png"
    assert path.is_file() and f"wrote {path}" in capsys.readouterr().out


def test_forward_writes_one_row_per_schedule(photo, tmp_path, capsys):
    one, two = tmp_path / "one.png", tmp_path / "two.png"
    common = ["--size", "16", "--num", "4", "--steps", "100", "--seed", "2"]
    assert main(["forward", str(photo), "--schedule", "linear", "--out", str(one), *common]) == 0
    argv = ["forward", str(photo), "--schedule", "linear,cosine", "--out", str(two), *common]
    assert main([*argv]) == 0
    out = capsys.readouterr().out
    assert "rows: linear, cosine" in out and f"wrote {two}" in out
    with Image.open(one) as a, Image.open(two) as b:
        assert a.mode == b.mode == "RGB"
        row, rows = np.asarray(a), np.asarray(b)
    assert rows.shape[1] == row.shape[1]
    assert 1.8 * row.shape[0] < rows.shape[0] < 2 * row.shape[0]
    # the first row is the linear schedule, with the same noise; the second one differs
    assert np.array_equal(rows[: row.shape[0]], row)
    assert not np.array_equal(rows[-row.shape[0] :], row)


# ---------------------------------------------------------------------- user mistakes
MISTAKES = [
    ("sample", lambda run, tmp, img: [str(tmp / "missing")], "run directory"),
    ("sample", lambda run, tmp, img: [str(tmp)], "is not a run directory"),
    ("train", lambda run, tmp, img: ["--resume", str(tmp / "missing")], "not found"),
    ("train", lambda run, tmp, img: ["--out", str(tmp / "new"), "bogus.key=1"], "unknown config"),
    ("train", lambda run, tmp, img: ["--out", str(tmp / "new"), "train.stepz=1"], "unknown key"),
    ("train", lambda run, tmp, img: ["--out", str(tmp / "new"), "steps=5"], "ambiguous"),
    ("train", lambda run, tmp, img: ["--out", str(tmp / "new"), "train.steps=abc"], "integer"),
    ("train", lambda run, tmp, img: ["--out", str(tmp / "new"), "train.amp=maybe"], "true or"),
    ("train", lambda run, tmp, img: ["--out", str(tmp / "new"), "--data", "no.npz"], "not found"),
    ("train", lambda run, tmp, img: ["--config", str(tmp / "no.toml")], "not found"),
    ("train", lambda run, tmp, img: ["--out", str(run)], "already holds a run"),
    ("train", lambda run, tmp, img: ["--resume", str(run), "--out", str(tmp)], "drop --out"),
    ("train", lambda run, tmp, img: ["--resume", str(run), "model.base_channels=16"], "fit"),
    ("train", lambda run, tmp, img: ["--resume", str(run), "train.steps=3"], "already at step"),
    ("sample", lambda run, tmp, img: [str(run), "--sampler", "euler"], "unknown sampler"),
    ("sample", lambda run, tmp, img: [str(run), "--n", "0"], "--n must be >= 1"),
    ("sample", lambda run, tmp, img: [str(run), "--steps", "0"], "steps must be between"),
    ("sample", lambda run, tmp, img: [str(run), "--device", "tpu:x"], "unknown device"),
    ("sample", lambda run, tmp, img: [str(run), "--out", str(img / "x.png")], "img.png"),
    ("forward", lambda run, tmp, img: [str(tmp / "missing.png")], "not found"),
    ("forward", lambda run, tmp, img: [str(img), "--schedule", ","], "--schedule"),
    ("forward", lambda run, tmp, img: [str(img), "--schedule", "linear,exp"], "'exp'"),
    ("forward", lambda run, tmp, img: [str(img), "--steps", "0"], "--steps must be >= 1"),
]


@pytest.mark.parametrize(
    ("command", "make_args", "expected"),
    MISTAKES,
    ids=[f"{c}-{e}" for c, _, e in MISTAKES],
)
def test_user_mistakes_give_one_line_and_exit_code_2(
    command, make_args, expected, run_dir, tmp_path, capsys
):
    img = tmp_path / "img.png"
    Image.new("RGB", (4, 4)).save(img)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    code = main([command, *make_args(run_dir, tmp_path, img)])
    assert code == 2
    line = one_error_line(capsys, command)
    assert expected in line
    assert not (tmp_path / "new").exists()  # nothing was created
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


# ---------------------------------------------------------------------- Ctrl-C and resume
def saved_step(run) -> int:
    return RunDir(run).load_checkpoint(files=()).step


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_then_resume(shapes_npz, tmp_path, capsys, monkeypatch, request, signum, code):
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, inherited))
    run = tmp_path / "run"
    calls = 0
    next_batch = TrainingBatches.next

    def signal_in_step_2(self, *args):
        nonlocal calls
        calls += 1
        if calls == 2:
            os.kill(os.getpid(), signum)
        return next_batch(self, *args)

    monkeypatch.setattr(TrainingBatches, "next", signal_in_step_2)
    argv = ["train", "--data", str(shapes_npz), "--out", str(run), "--no-progress"]
    assert main([*argv, *TINY, "train.steps=4"]) == code
    err = capsys.readouterr().err.strip()
    name = signal.Signals(signum).name
    assert err == (
        f"ddpm train: {name}: stopped at step 2; checkpoint saved in {run}; "
        f"continue with `ddpm train --resume {run}`"
    )
    assert saved_step(run) == 2
    monkeypatch.setattr(TrainingBatches, "next", next_batch)

    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert "done: step 4" in capsys.readouterr().out
    assert saved_step(run) == 4
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4]

    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "already at step 4; nothing to train" in out and "loss nan" not in out

    assert main(["train", "--resume", str(run), "train.steps=5", "--no-progress"]) == 0
    assert "done: step 5" in capsys.readouterr().out
    assert json.loads((run / "config.json").read_text())["train"]["steps"] == 5
