"""Side by side comparison of run directories: a markdown table and one picture of the grids.

``ddpm compare RUN_DIR...`` reads what each run directory already holds (config.json,
state.json, metrics.jsonl, the latest ``samples/step_*.png`` and, where present, the
``eval.json`` of ``ddpm eval`` and the ``nll.json`` of ``ddpm nll``); it computes nothing new.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ddpmkit.errors import ConfigError, RunDirError
from ddpmkit.fileio import atomic_write_bytes
from ddpmkit.rundir import EVAL_FILE, NLL_FILE, RunDir

LOSS_RECORDS = 5  # the final loss is the mean over this many last metrics.jsonl records
MISSING = "–"


@dataclass
class EvalResult:
    """One row of ``eval.json``: a sampler and step count with its sample-quality metrics."""

    sampler: str
    steps: int | None
    nfe: int | None = None
    fid: float | None = None
    kid_mean: float | None = None
    kid_std: float | None = None
    precision: float | None = None
    recall: float | None = None
    seconds: float | None = None
    n: int | None = None

    @property
    def key(self) -> tuple[str, int | None]:
        return (self.sampler, self.steps)

    @property
    def label(self) -> str:
        return f"{self.sampler}/{self.steps if self.steps is not None else 'default'}"


@dataclass
class RunSummary:
    """What a run directory says about itself; ``None`` where a file or value is missing."""

    name: str
    path: Path
    config: dict[str, Any]  # flattened: "section.field" -> value
    step: int | None = None
    final_loss: float | None = None
    train_seconds: float | None = None
    evals: list[EvalResult] = field(default_factory=list)
    eval_step: int | None = None
    eval_features: str | None = None
    nll_bits_per_dim: float | None = None
    nll_ci95: float | None = None
    nll_step: int | None = None
    grid: Path | None = None


# ---------------------------------------------------------------------- reading one run
def flatten_config(config: dict[str, Any]) -> dict[str, Any]:
    """``{"train": {"lr": 1e-3}}`` → ``{"train.lr": 1e-3}``; lists become tuples."""
    flat: dict[str, Any] = {}
    for section, values in config.items():
        items = values.items() if isinstance(values, dict) else [(None, values)]
        for key, value in items:
            name = section if key is None else f"{section}.{key}"
            flat[name] = tuple(value) if isinstance(value, list) else value
    return flat


def final_loss(run_dir: str | Path, last: int = LOSS_RECORDS) -> float | None:
    """Mean ``loss`` of the last ``last`` records of metrics.jsonl (a last line cut short by a
    crash is skipped); ``None`` without any record."""
    losses = []
    for record in RunDir(run_dir).read_metrics():
        try:
            loss = float(record["loss"])
        except (ValueError, KeyError, TypeError):
            continue
        if math.isfinite(loss):
            losses.append(loss)
    tail = losses[-last:]
    return sum(tail) / len(tail) if tail else None


def _read_json(run: RunDir, name: str) -> dict[str, Any] | None:
    data = run.read_json(name)
    if data is not None and not isinstance(data, dict):
        raise RunDirError(f"{run.path / name} does not hold a JSON object: delete or rewrite it")
    return data


def _number(value: Any, kind: type = float) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return kind(value) if math.isfinite(value) else None


def _eval_result(row: Any, path: Path) -> EvalResult:
    if not isinstance(row, dict) or not isinstance(row.get("sampler"), str):
        raise RunDirError(f"{path}: every entry of 'results' needs a 'sampler' name")
    return EvalResult(
        sampler=row["sampler"],
        steps=_number(row.get("steps"), int),
        nfe=_number(row.get("nfe"), int),
        fid=_number(row.get("fid")),
        kid_mean=_number(row.get("kid_mean")),
        kid_std=_number(row.get("kid_std")),
        precision=_number(row.get("precision")),
        recall=_number(row.get("recall")),
        seconds=_number(row.get("seconds")),
        n=_number(row.get("n"), int),
    )


def summarize_run(run_dir: str | Path) -> RunSummary:
    """Read one run directory (RunDirError if it is none)."""
    run = RunDir(run_dir).require()
    grids = run.grids()
    summary = RunSummary(
        name=run.path.resolve().name,
        path=run.path,
        config=flatten_config(run.read_config_dict()),
        final_loss=final_loss(run.path),
        grid=grids[-1] if grids else None,
    )
    if run.has_checkpoint():
        checkpoint = run.load_checkpoint(files=())
        summary.step = checkpoint.step
        summary.train_seconds = checkpoint.elapsed_s if checkpoint.elapsed_s > 0 else None
    evaluation = _read_json(run, EVAL_FILE)
    if evaluation is not None:
        rows = evaluation.get("results", [])
        if not isinstance(rows, list):
            raise RunDirError(f"{run.eval_path}: 'results' must be a list")
        summary.evals = [_eval_result(row, run.eval_path) for row in rows]
        summary.eval_step = _number(evaluation.get("step"), int)
        features = evaluation.get("features")
        summary.eval_features = features if isinstance(features, str) else None
    nll = _read_json(run, NLL_FILE)
    if nll is not None:
        summary.nll_bits_per_dim = _number(nll.get("bits_per_dim"))
        summary.nll_ci95 = _number(nll.get("ci95"))
        summary.nll_step = _number(nll.get("step"), int)
    return summary


def summarize_runs(run_dirs: Sequence[str | Path]) -> list[RunSummary]:
    """:func:`summarize_run` of each directory, in order; a directory named twice counts once,
    and runs whose folder names collide are named by the path as given."""
    if not run_dirs:
        raise ConfigError("give at least one run directory")
    summaries: list[RunSummary] = []
    seen: set[Path] = set()
    for run_dir in run_dirs:
        summary = summarize_run(run_dir)
        if summary.path.resolve() not in seen:
            seen.add(summary.path.resolve())
            summaries.append(summary)
    names = [s.name for s in summaries]
    for summary in summaries:
        if names.count(summary.name) > 1:
            summary.name = str(summary.path)
    return summaries


# ---------------------------------------------------------------------- choosing eval rows
@dataclass
class EvalChoice:
    """The eval.json row shown for each run (``None``: none) and whether they share one
    (sampler, steps)."""

    rows: list[EvalResult | None]
    common: bool


def _nfe(row: EvalResult) -> int:
    return row.nfe if row.nfe is not None else (row.steps or 0)


def choose_evals(
    summaries: Sequence[RunSummary], sampler: str | None = None, steps: int | None = None
) -> EvalChoice:
    """One eval result per run. With ``sampler``/``steps``: the row matching them (the one with
    most NFE if several match). Without: the (sampler, steps) that every evaluated run has, the
    one with most NFE; if there is none, each run's best-FID row."""
    evaluated = [s for s in summaries if s.evals]
    if sampler is not None or steps is not None:
        rows: list[EvalResult | None] = []
        for summary in summaries:
            matches = [
                r
                for r in summary.evals
                if (sampler is None or r.sampler == sampler) and (steps is None or r.steps == steps)
            ]
            rows.append(max(matches, key=_nfe) if matches else None)
        if evaluated and all(r is None for r in rows):
            wanted = [f"sampler {sampler}"] if sampler is not None else []
            wanted += [f"{steps} steps"] if steps is not None else []
            available = sorted({r.label for s in evaluated for r in s.evals})
            raise ConfigError(
                f"no run has an eval result with {' and '.join(wanted)}: eval.json holds "
                + ", ".join(available)
            )
        return EvalChoice(rows, len({r.key for r in rows if r is not None}) <= 1)
    if not evaluated:
        return EvalChoice([None] * len(summaries), True)
    common_keys = set.intersection(*({r.key for r in s.evals} for s in evaluated))
    if common_keys:
        nfe = {k: max(_nfe(r) for r in evaluated[0].evals if r.key == k) for k in common_keys}
        best = max(common_keys, key=lambda k: (nfe[k], k[0], k[1] or 0))
        rows = [
            max((r for r in s.evals if r.key == best), key=_nfe, default=None) for s in summaries
        ]
        return EvalChoice(rows, True)

    def fid(row: EvalResult) -> float:
        return row.fid if row.fid is not None else math.inf

    rows = [min(s.evals, key=fid) if s.evals else None for s in summaries]
    return EvalChoice(rows, len({r.key for r in rows if r is not None}) <= 1)


# ---------------------------------------------------------------------- the table
def _format_value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return ",".join(_format_value(v) for v in value)
    return str(value)


def differing_keys(summaries: Sequence[RunSummary]) -> list[str]:
    """Sorted config keys whose values are not the same in every run (a key missing from some
    run's config counts as different)."""
    keys = sorted({k for s in summaries for k in s.config})
    marker = object()
    return [k for k in keys if len({repr(s.config.get(k, marker)) for s in summaries}) > 1]


def _num(value: float | None, digits: int) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def _pm(mean: float | None, spread: float | None, digits: int, scale: float = 1.0) -> str:
    if mean is None:
        return MISSING
    text = f"{mean * scale:.{digits}f}"
    return text if spread is None else f"{text} ± {spread * scale:.{digits}f}"


def _metric(result: EvalResult | None, name: str) -> float | None:
    return None if result is None else getattr(result, name)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table(
    summaries: Sequence[RunSummary], sampler: str | None = None, steps: int | None = None
) -> str:
    """A markdown table, one row per run: the config keys that differ between the runs, then
    step, training time, final loss, FID, KID (×10³), precision, recall and NLL, "–" where a run
    lacks a value; notes below say what was shared and where values came from."""
    choice = choose_evals(summaries, sampler, steps)
    keys = differing_keys(summaries)
    header = ["run", *keys]
    if not choice.common:
        header.append("eval")
    header += ["step", "train min", "loss", "FID", "KID ×10³", "precision", "recall"]
    header.append("NLL bits/dim")
    rows = []
    for summary, result in zip(summaries, choice.rows, strict=True):
        row = [summary.name]
        row += [_format_value(summary.config[k]) if k in summary.config else MISSING for k in keys]
        if not choice.common:
            row.append(result.label if result else MISSING)
        minutes = None if summary.train_seconds is None else summary.train_seconds / 60

        row += [
            MISSING if summary.step is None else str(summary.step),
            _num(minutes, 1),
            _num(summary.final_loss, 4),
            _num(_metric(result, "fid"), 2),
            _pm(_metric(result, "kid_mean"), _metric(result, "kid_std"), 2, 1e3),
            _num(_metric(result, "precision"), 3),
            _num(_metric(result, "recall"), 3),
            _pm(summary.nll_bits_per_dim, summary.nll_ci95, 3),
        ]
        rows.append([_cell(c) for c in row])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    lines = [line(header), "| " + " | ".join("-" * w for w in widths) + " |"]
    lines += [line(r) for r in rows]
    lines.append("")
    lines += _notes(summaries, choice, keys)
    return "\n".join(lines) + "\n"


def _notes(summaries: Sequence[RunSummary], choice: EvalChoice, keys: list[str]) -> list[str]:
    all_keys = {k for s in summaries for k in s.config}
    notes = [f"shared: {len(all_keys) - len(keys)} settings identical across runs"]
    shown = [r for r in choice.rows if r is not None]
    if shown:
        if choice.common:
            where = f"{shown[0].sampler}, {shown[0].steps} steps"
        else:
            where = "no sampler/steps common to all runs: each run's best FID, see 'eval'"
        details = [f"NFE {shown[0].nfe}"] if choice.common and shown[0].nfe is not None else []
        counts = sorted({r.n for r in shown if r.n is not None})
        if counts:
            differs = " (differs between runs)" if len(counts) > 1 else ""
            details.append(f"n = {'/'.join(map(str, counts))}{differs}")
        features = sorted({s.eval_features for s in summaries if s.eval_features})
        if features:
            details.append(f"{'/'.join(features)} features")
        extra = f" ({', '.join(details)})" if details else ""
        notes.append(f"FID, KID, precision, recall: {where}{extra}")
    stale = []
    for summary in summaries:
        for what, step in (("eval", summary.eval_step), ("nll", summary.nll_step)):
            if step is not None and summary.step is not None and step != summary.step:
                stale.append(f"{summary.name} ({what} at step {step}, run at {summary.step})")
    if stale:
        notes.append("older than the weights: " + ", ".join(stale))
    no_grid = [s.name for s in summaries if s.grid is None]
    if no_grid:
        notes.append("no samples/step_*.png (left out of the image): " + ", ".join(no_grid))
    return notes


# ---------------------------------------------------------------------- the picture
def side_by_side(
    summaries: Sequence[RunSummary], path: str | Path, gap: int = 8, background: int = 255
) -> Path:
    """One PNG with each run's latest sample grid side by side, the run's name above it; grids
    of different sizes are padded to the same height. Runs without a grid are left out
    (RunDirError if none has one). Written atomically; returns the path."""
    from PIL import Image, ImageDraw, ImageFont

    path = Path(path)
    with_grid = [s for s in summaries if s.grid is not None]
    if not with_grid:
        raise RunDirError("none of the runs has a sample grid (samples/step_*.png) yet")
    grids = []
    for summary in with_grid:
        with Image.open(summary.grid) as image:
            image.load()
            grids.append(image.copy())
    mode = "L" if all(g.mode == "L" for g in grids) else "RGB"
    grids = [g.convert(mode) for g in grids]
    try:
        font: Any = ImageFont.load_default(size=16)
    except TypeError:  # Pillow < 10.1: the small bitmap font only
        font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new(mode, (1, 1)))
    text_boxes = [probe.textbbox((0, 0), s.name, font=font) for s in with_grid]
    label_h = max(box[3] for box in [*text_boxes, probe.textbbox((0, 0), "Ag", font=font)]) + 2 * 4
    widths = [max(g.width, box[2] - box[0] + 8) for g, box in zip(grids, text_boxes, strict=True)]
    height = label_h + max(g.height for g in grids)
    fill: Any = background if mode == "L" else (background,) * 3
    canvas = Image.new(mode, (sum(widths) + gap * (len(grids) - 1), height), fill)
    draw = ImageDraw.Draw(canvas)
    left = 0
    for summary, grid, width, box in zip(with_grid, grids, widths, text_boxes, strict=True):
        text_w = box[2] - box[0]
        draw.text((left + (width - text_w) // 2 - box[0], 4), summary.name, fill=0, font=font)
        canvas.paste(grid, (left + (width - grid.width) // 2, label_h))
        left += width + gap
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return path
