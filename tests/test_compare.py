"""`ddpm compare` and ddpmkit.compare on tiny real runs, and the luz grid configs."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import tiny_overrides, train_run
from ddpmkit.cli import main
from ddpmkit.compare import (
    LOSS_RECORDS,
    MISSING,
    choose_evals,
    final_loss,
    markdown_table,
    side_by_side,
    summarize_run,
    summarize_runs,
)
from ddpmkit.config import DiffusionConfig, RunConfig, UNetConfig, resolve_config
from ddpmkit.errors import ConfigError, RunDirError

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parent.parent
LUZ = ROOT / "configs" / "luz"

RUNS = {  # name -> overrides that make it differ
    "l2": ["diffusion.loss=l2", "diffusion.schedule=linear"],
    "l1": ["diffusion.loss=l1", "diffusion.schedule=linear"],
    "l1cos": ["diffusion.loss=l1", "diffusion.schedule=cosine"],
}


def eval_row(sampler: str, steps: int, fid: float, **extra) -> dict:
    row = {"sampler": sampler, "steps": steps, "nfe": steps, "fid": fid, "kid_mean": 0.0012}
    row |= {"kid_std": 0.0003, "precision": 0.71, "recall": 0.62, "seconds": 1.5, "n": 100}
    return row | extra


def write_eval(run: Path, rows: list[dict], step: int = 3) -> None:
    data = {"features": "digits", "n": 100, "step": step, "results": rows}
    (run / "eval.json").write_text(json.dumps(data))


@pytest.fixture(scope="module")
def runs(shapes_npz, tmp_path_factory) -> dict[str, Path]:
    """Three tiny runs of 3 steps trained as `ddpm train` does, each with a final grid."""
    root = tmp_path_factory.mktemp("compare")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, extra in RUNS.items():
            overrides = tiny_overrides(shapes_npz, "train.steps=3", "train.sample_every=3", *extra)
            assert train_run(root / name, overrides).step == 3
    finally:
        torch.set_num_threads(threads)
    write_eval(root / "l2", [eval_row("ddpm", 50, 9.5), eval_row("ddim", 20, 12.25)])
    write_eval(root / "l1", [eval_row("ddim", 20, 11.5), eval_row("ddim", 10, 14.0)])
    report = {"bits_per_dim": 3.4567, "ci95": 0.0123, "prior": 0.0, "decoder": 1.0}
    (root / "l2" / "nll.json").write_text(json.dumps(report | {"kl_sum": 2.4, "n": 8, "step": 3}))
    return {name: root / name for name in RUNS}


def table_rows(table: str) -> list[list[str]]:
    lines = [line for line in table.splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in lines]


def as_dicts(table: str) -> dict[str, dict[str, str]]:
    header, _, *rows = table_rows(table)
    return {row[0]: dict(zip(header, row, strict=True)) for row in rows}


# ---------------------------------------------------------------------- reading a run
def test_summary_of_a_real_run(runs):
    summary = summarize_run(runs["l2"])
    assert summary.name == "l2" and summary.step == 3
    assert summary.config["diffusion.loss"] == "l2"
    assert summary.config["model.channel_mults"] == (1, 2)
    assert summary.train_seconds is not None and summary.train_seconds > 0
    assert summary.grid == runs["l2"] / "samples" / "step_000003.png"
    losses = [json.loads(line)["loss"] for line in (runs["l2"] / "metrics.jsonl").open()]
    assert summary.final_loss == pytest.approx(sum(losses[-LOSS_RECORDS:]) / len(losses[-5:]))
    assert summary.nll_bits_per_dim == 3.4567 and summary.nll_ci95 == 0.0123
    assert [r.label for r in summary.evals] == ["ddpm/50", "ddim/20"]
    assert summarize_run(runs["l1cos"]).evals == []


def test_final_loss_skips_a_truncated_line_and_takes_the_last_records(tmp_path):
    records = [{"step": i, "loss": float(i)} for i in range(1, 9)]
    text = "".join(json.dumps(r) + "\n" for r in records) + '{"step": 9, "lo'
    (tmp_path / "metrics.jsonl").write_text(text)
    assert final_loss(tmp_path) == pytest.approx(sum(range(4, 9)) / 5)
    assert final_loss(tmp_path, last=2) == pytest.approx(7.5)
    (tmp_path / "metrics.jsonl").write_text("")
    assert final_loss(tmp_path) is None
    assert final_loss(tmp_path / "missing") is None


def test_latest_grid_is_the_highest_step(runs, tmp_path):
    run = shutil.copytree(runs["l1"], tmp_path / "copy")
    shutil.copy(run / "samples" / "step_000003.png", run / "samples" / "step_000120.png")
    shutil.copy(run / "samples" / "step_000003.png", run / "samples" / "step_000020.png")
    (run / "samples" / "sample-ddim5-seed3.png").write_bytes(b"not a grid")
    assert summarize_run(run).grid == run / "samples" / "step_000120.png"


# ---------------------------------------------------------------------- the table
def test_table_shows_only_the_differing_keys_and_the_values(runs):
    table = markdown_table(summarize_runs(list(runs.values())))
    header = table_rows(table)[0]
    assert header[1:3] == ["diffusion.loss", "diffusion.schedule"]
    assert "eval" not in header  # ddim/20 is common to the evaluated runs
    rows = as_dicts(table)
    assert list(rows) == ["l2", "l1", "l1cos"]
    assert rows["l2"]["diffusion.loss"] == "l2" and rows["l1cos"]["diffusion.schedule"] == "cosine"
    assert rows["l2"]["FID"] == "12.25" and rows["l1"]["FID"] == "11.50"  # ddim/20, not ddpm/50
    assert rows["l2"]["KID ×10³"] == "1.20 ± 0.30"
    assert rows["l2"]["precision"] == "0.710" and rows["l2"]["recall"] == "0.620"
    assert rows["l2"]["NLL bits/dim"] == "3.457 ± 0.012"
    assert rows["l1"]["NLL bits/dim"] == MISSING
    for column in ("FID", "KID ×10³", "precision", "recall", "NLL bits/dim"):
        assert rows["l1cos"][column] == MISSING
    assert all(row["step"] == "3" for row in rows.values())
    assert all(float(row["loss"]) > 0 for row in rows.values())
    notes = table.split("\n\n", 1)[1]
    shared = sum(len(section) for section in RunConfig().to_dict().values())
    assert f"shared: {shared - 2} settings identical across runs" in notes
    assert "ddim, 20 steps (NFE 20, n = 100, digits features)" in notes


def test_sampler_and_steps_choose_the_eval_row(runs):
    summaries = summarize_runs(list(runs.values()))
    rows = as_dicts(markdown_table(summaries, sampler="ddpm", steps=50))
    assert rows["l2"]["FID"] == "9.50" and rows["l1"]["FID"] == MISSING
    rows = as_dicts(markdown_table(summaries, sampler="ddim"))  # most NFE of each run's ddim rows
    assert rows["l2"]["FID"] == "12.25" and rows["l1"]["FID"] == "11.50"
    with pytest.raises(ConfigError, match="ddim/10, ddim/20, ddpm/50"):
        markdown_table(summaries, sampler="euler")


def test_without_a_common_eval_each_run_shows_its_best_fid(runs):
    summaries = summarize_runs([runs["l2"], runs["l1"]])
    summaries[1].evals = [e for e in summaries[1].evals if e.steps == 10]
    choice = choose_evals(summaries)
    assert not choice.common and [r.label for r in choice.rows] == ["ddpm/50", "ddim/10"]
    table = markdown_table(summaries)
    rows = as_dicts(table)
    assert rows["l2"]["eval"] == "ddpm/50" and rows["l2"]["FID"] == "9.50"
    assert rows["l1"]["eval"] == "ddim/10" and rows["l1"]["FID"] == "14.00"
    assert "each run's best FID" in table


def test_one_run_and_a_stale_eval(runs, tmp_path):
    run = shutil.copytree(runs["l1"], tmp_path / "old")
    write_eval(run, [eval_row("ddim", 20, 30.0)], step=1)
    table = markdown_table(summarize_runs([run]))
    assert table_rows(table)[0][:2] == ["run", "step"]  # nothing differs
    assert "older than the weights: old (eval at step 1, run at 3)" in table


# ---------------------------------------------------------------------- the picture
def test_side_by_side_image(runs, tmp_path):
    summaries = summarize_runs(list(runs.values()))
    path = side_by_side(summaries, tmp_path / "sub" / "cmp.png")
    sizes = []
    for summary in summaries:
        with Image.open(summary.grid) as grid:
            sizes.append(grid.size)
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG" and image.mode == "L"
        width, height = image.size
    total = sum(w for w, _ in sizes)
    assert total <= width <= total + 40
    assert max(h for _, h in sizes) + 10 <= height <= max(h for _, h in sizes) + 40
    assert not list(path.parent.glob("*.tmp"))


def test_grids_of_different_sizes_and_modes_are_padded(runs, tmp_path):
    summaries = summarize_runs([runs["l2"], runs["l1"]])
    summaries[0].grid, summaries[1].grid = tmp_path / "wide.png", tmp_path / "tall.png"
    Image.new("RGB", (100, 60), (255, 0, 0)).save(summaries[0].grid)
    Image.new("L", (50, 120), 0).save(summaries[1].grid)
    with Image.open(side_by_side(summaries, tmp_path / "mixed.png")) as image:
        image.load()
        assert image.mode == "RGB" and 150 <= image.width <= 190 and 130 <= image.height <= 160
        assert image.getpixel((50, image.height - 1)) == (255, 255, 255)  # padding below
        assert image.getpixel((image.width - 25, image.height - 1)) == (0, 0, 0)  # the tall grid


def test_a_run_without_grid_is_left_out_of_the_image(runs, tmp_path):
    run = shutil.copytree(runs["l1"], tmp_path / "nogrid")
    shutil.rmtree(run / "samples")
    summaries = summarize_runs([runs["l2"], run])
    table = markdown_table(summaries)
    assert "no samples/step_*.png (left out of the image): nogrid" in table
    path = side_by_side(summaries, tmp_path / "one.png")
    with Image.open(summaries[0].grid) as grid, Image.open(path) as image:
        assert image.width == grid.width
    with pytest.raises(RunDirError, match="none of the runs has a sample grid"):
        side_by_side(summaries[1:], tmp_path / "none.png")


# ---------------------------------------------------------------------- command line
def test_compare_command(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["compare", *map(str, runs.values()), "--out", "cmp.md"]) == 0
    captured = capsys.readouterr()
    assert captured.out == (tmp_path / "cmp.md").read_text(encoding="utf-8")
    assert set(as_dicts(captured.out)) == {"l2", "l1", "l1cos"}
    assert "wrote cmp.md" in captured.err and "wrote compare.png" in captured.err
    assert (tmp_path / "compare.png").is_file()

    argv = ["compare", str(runs["l2"]), str(runs["l1"]), "--sampler", "ddpm", "--steps", "50"]
    assert main([*argv, "--no-image"]) == 0
    captured = capsys.readouterr()
    assert as_dicts(captured.out)["l2"]["FID"] == "9.50" and captured.err == ""
    argv = ["compare", str(runs["l1"]), "--image", str(tmp_path / "x" / "pic.png")]
    assert main(argv) == 0
    assert (tmp_path / "x" / "pic.png").is_file()


def test_same_folder_name_in_two_places(runs, tmp_path):
    a = shutil.copytree(runs["l1"], tmp_path / "a" / "run")
    b = shutil.copytree(runs["l2"], tmp_path / "b" / "run")
    summaries = summarize_runs([a, b, a])
    assert [s.name for s in summaries] == [str(a), str(b)]


@pytest.mark.parametrize(
    ("make_args", "expected"),
    [
        (lambda run, tmp: [str(tmp / "missing")], "not found"),
        (lambda run, tmp: [str(run), str(tmp)], "is not a run directory"),
        (lambda run, tmp: [str(run), "--sampler", "euler"], "no run has an eval result"),
        (lambda run, tmp: [str(run), "--out", str(tmp)], "directory"),
    ],
    ids=["missing", "not-a-run", "no-such-eval", "out-is-a-folder"],
)
def test_mistakes_give_one_line_and_exit_code_2(make_args, expected, runs, tmp_path, capsys):
    code = main(["compare", *make_args(runs["l2"], tmp_path), "--no-image"])
    assert code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ddpm compare: error: ")
    assert expected in lines[0]


def test_corrupt_eval_json_is_named(runs, tmp_path, capsys):
    run = shutil.copytree(runs["l1"], tmp_path / "bad")
    (run / "eval.json").write_text('{"results": [')
    assert main(["compare", str(run), "--no-image"]) == 2
    assert "eval.json is not valid JSON" in capsys.readouterr().err


# ---------------------------------------------------------------------- the luz configs
LUZ_GRID = {
    f"{loss_name}_{target_name}_{schedule}": (loss, prediction, schedule)
    for loss_name, loss in (("mae", "l1"), ("mse", "l2"))
    for target_name, prediction in (("noise", "eps"), ("image", "x0"))
    for schedule in ("linear", "cosine")
}


def test_the_luz_grid_is_complete():
    assert sorted(p.stem for p in LUZ.glob("*.toml")) == sorted(LUZ_GRID)
    readme = (LUZ / "README.md").read_text(encoding="utf-8")
    assert "for f in configs/luz/*.toml" in readme and "ddpm compare runs/luz/*" in readme


@pytest.mark.parametrize("name", sorted(LUZ_GRID))
def test_luz_config_changes_only_the_diffusion_choices(name):
    loss, prediction, schedule = LUZ_GRID[name]
    config = resolve_config(LUZ / f"{name}.toml")
    assert (config.diffusion.loss, config.diffusion.prediction) == (loss, prediction)
    assert config.diffusion.schedule == schedule
    # the recipe the grid was measured on: the default before issue 16, whose network and
    # process are the classes' own defaults (32 channels; linear, ε, unweighted)
    expected = RunConfig(model=UNetConfig(), diffusion=DiffusionConfig())
    expected.train = dataclasses.replace(
        expected.train, steps=2800, batch_size=64, warmup_steps=200, ema_decay=0.995
    )
    expected.diffusion = dataclasses.replace(
        expected.diffusion, loss=loss, prediction=prediction, schedule=schedule
    )
    assert config == expected
