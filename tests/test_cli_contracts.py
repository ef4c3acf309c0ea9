"""Command-line contracts fixed with the redesign: non-finite numbers refused by one shared
argument type, the null class of a run trained without label dropout never used silently, every
output saying its conditioning, a conditional run's training grid a row per class, RePaint's
mask convention behind --invert-mask, and a torchrun process group always destroyed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import shapes_array, tiny_overrides
from ddpmkit.cli import main


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture(scope="module")
def labelled_npz(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "shapes.npz"
    np.savez(path, arr_0=shapes_array(), labels=np.arange(256) % 4)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, labelled_npz) -> dict[str, Path]:
    """A plain run, and conditional runs trained with and without label dropout."""
    root = tmp_path_factory.mktemp("runs")
    made = {}
    for name, extra in (
        ("plain", ()),
        ("dropout", ("train.conditional=true", "train.label_dropout=0.2")),
        ("no_dropout", ("train.conditional=true", "train.label_dropout=0")),
    ):
        overrides = tiny_overrides(
            labelled_npz, "train.steps=2", "sample.steps=3", "sample.num_samples=32", *extra
        )
        overrides = [o for o in overrides if o != "train.sample_every=0"]
        assert main(["train", "--out", str(root / name), "--no-progress", *overrides]) == 0
        made[name] = root / name
    return made


@pytest.mark.parametrize(
    ("command", "option", "value"),
    [
        ("sample", "--eta", "nan"),
        ("sample", "--eta", "inf"),
        ("sample", "--guidance", "nan"),
        ("sample", "--guidance", "-inf"),
        ("edit", "--strength", "nan"),
        ("eval", "--guidance", "0,inf"),
    ],
)
def test_non_finite_numbers_are_one_line_and_exit_2(runs, command, option, value, capsys):
    argv = [command, str(runs["dropout"]), f"{option}={value}", "--no-progress"]
    if command == "edit":
        argv += ["--image", "nothing.png"]
    assert main(argv) == 2
    err = _one_error_line(capsys)
    assert f"ddpm {command}: error: argument {option}: must be" in err


def test_what_needs_the_null_class_is_refused_on_a_run_without_label_dropout(
    runs, tmp_path, capsys
):
    run = str(runs["no_dropout"])
    for argv in (
        ["sample", run, "--n", "2"],
        ["sample", run, "--class", "1", "--guidance", "1", "--n", "2"],
        ["nll", run, "--n", "2"],
        ["eval", run, "--n", "4", "--guidance", "1", "--features", "digits"],
    ):
        assert main([*argv, "--no-progress", "--out", str(tmp_path / "x")]) == 2, argv
        assert "train.label_dropout=0" in _one_error_line(capsys)
    out = tmp_path / "ok.png"
    assert (
        main(
            [
                "sample",
                run,
                "--class",
                "1",
                "--n",
                "2",
                "--steps",
                "3",
                "--sampler",
                "ddim",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    assert "conditioning: class 1, guidance 0" in capsys.readouterr().out


def test_every_output_says_its_conditioning(runs, tmp_path, capsys):
    common = ["--n", "2", "--sampler", "ddim", "--steps", "3", "--no-progress"]
    assert main(["sample", str(runs["plain"]), *common, "--out", str(tmp_path / "a.png")]) == 0
    assert "conditioning: unconditional\n" in capsys.readouterr().out
    assert main(["sample", str(runs["dropout"]), *common, "--out", str(tmp_path / "b.png")]) == 0
    assert "conditioning: unconditional (the null class of a model of 4 classes)" in (
        capsys.readouterr().out
    )
    nll = tmp_path / "nll.json"
    assert main(["nll", str(runs["dropout"]), "--n", "2", "--out", str(nll), "--no-progress"]) == 0
    assert json.loads(nll.read_text())["conditioning"].startswith("unconditional (the null")


def test_a_conditional_runs_training_grid_has_a_row_per_class(runs):
    """32 grid samples of 4 classes: 8 per class, one class per row of 8 images, so the grid is
    twice as wide as tall; an unconditional grid of 32 is 6 × 6 (its last row part-filled)."""
    for name, rows, columns in (("dropout", 4, 8), ("plain", 6, 6)):
        grid = sorted((runs[name] / "samples").glob("step_*.png"))[-1]
        width, height = Image.open(grid).size
        assert width / height == pytest.approx(columns / rows, rel=0.05), (name, width, height)


def test_a_repaint_mask_is_read_with_invert_mask(runs, tmp_path):
    """A RePaint-convention mask (white = keep) given with --invert-mask keeps its white pixels
    exactly; without the flag the same file keeps the complement."""
    image = tmp_path / "input.png"
    Image.fromarray(shapes_array(1)[0, :, :, 0]).save(image)
    keep_top = np.zeros((8, 8), np.uint8)
    keep_top[:4] = 255  # white = keep, in RePaint's convention
    mask = tmp_path / "mask.png"
    Image.fromarray(keep_top).save(mask)
    source = np.asarray(Image.open(image), dtype=np.float32)
    for invert, kept in ((True, slice(0, 4)), (False, slice(4, 8))):
        npz = tmp_path / f"out-{invert}.npz"
        argv = [
            "inpaint",
            str(runs["plain"]),
            "--image",
            str(image),
            "--mask",
            str(mask),
            "--method",
            "replace",
            "--sampler",
            "ddim",
            "--steps",
            "3",
            "--npz",
            str(npz),
            "--out",
            str(tmp_path / f"grid-{invert}.png"),
            "--no-progress",
        ]
        assert main([*argv, *(["--invert-mask"] if invert else [])]) == 0
        result = np.load(npz)["arr_0"][0, :, :, 0].astype(np.float32)
        assert np.array_equal(result[kept], source[kept])


def test_a_process_group_made_for_an_evaluation_is_destroyed_on_every_path(monkeypatch, tmp_path):
    """gloo threads left holding the last collective at interpreter shutdown abort the process
    (exit −6): the group torchrun_processes creates is destroyed however its body ends."""
    import torch.distributed as dist

    from ddpmkit.sharding import torchrun_processes

    monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun; the group itself has one process
    store = dist.FileStore(str(tmp_path / "store"), 1)
    monkeypatch.setattr(
        dist,
        "init_process_group",
        lambda backend: dist.distributed_c10d.init_process_group(
            backend, store=store, rank=0, world_size=1
        ),
    )
    with pytest.raises(RuntimeError, match="body failed"):
        with torchrun_processes("cpu") as (distributed, rank, device):
            assert distributed and rank == 0 and dist.is_initialized()
            raise RuntimeError("body failed")
    assert not dist.is_initialized()
    monkeypatch.setenv("WORLD_SIZE", "1")
    with torchrun_processes("cpu") as (distributed, _, _):
        assert not distributed and not dist.is_initialized()
    assert torch.distributed.is_available()
