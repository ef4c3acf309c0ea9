"""Figures with matplotlib (optional extra ``ddpmkit[plot]``): the forward process, the schedules,
the time embedding, training curves and sample quality against network calls.

matplotlib is imported inside the functions, never at module import, and drawn with the Agg
canvas on a bare :class:`~matplotlib.figure.Figure` (no pyplot, no global state). Every function
writes a PNG atomically and returns its path.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ddpmkit.data import to_uint8
from ddpmkit.errors import ConfigError, RunDirError
from ddpmkit.fileio import atomic_write_bytes
from ddpmkit.rundir import EVAL_FILE, METRICS_FILE, RunDir

if TYPE_CHECKING:
    from matplotlib.figure import Figure

QUALITY_METRICS = {"fid": "fid", "kid": "kid_mean", "kid_mean": "kid_mean"}
_DPI = 110


def _figure(width: float, height: float) -> Figure:
    """A Figure attached to an Agg canvas; ConfigError if matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError(
            "plots need matplotlib, which is not installed: pip install 'ddpmkit[plot]'"
        ) from None
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    """Render ``fig`` to PNG bytes and write them atomically."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"'{path}' is a folder: give a file name such as {path / 'plot.png'}")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _schedule_names(schedules: Sequence[str]) -> list[str]:
    names = [s.strip() for s in schedules if s.strip()]
    if not names:
        raise ConfigError("give at least one schedule name, e.g. linear,cosine")
    return names


def _check_steps(num_steps: int) -> None:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ConfigError(f"the number of diffusion steps must be an integer >= 1, got {num_steps}")


# ---------------------------------------------------------------------- forward process
def plot_forward_process(
    image: torch.Tensor,
    schedules: Sequence[str],
    path: str | Path,
    num: int = 8,
    num_steps: int = 1000,
    seed: int = 0,
) -> Path:
    """One row per schedule, ``num`` columns at evenly spaced t ∈ [0, T−1]: draws of
    x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε (Ho et al. 2020, eq. 4) with the same ε everywhere, so the rows
    differ only by their schedule. ``image`` is (C, H, W) in [-1, 1]; columns are labelled with
    the paper's 1-based t and ᾱ_t."""
    from ddpmkit.diffusion import spaced_timesteps
    from ddpmkit.schedules import make_schedule

    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ConfigError(
            f"the image must have shape (C, H, W) with C 1 or 3, got {tuple(image.shape)}"
        )
    if num < 1:
        raise ConfigError(f"the number of columns must be >= 1, got {num}")
    _check_steps(num_steps)
    names = _schedule_names(schedules)
    alpha_bars = {name: make_schedule(name, num_steps).alphas_cumprod for name in names}
    timesteps = spaced_timesteps(num_steps, min(num, num_steps))
    x0 = image.detach().cpu().to(torch.float64)
    noise = torch.randn(
        x0.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )

    fig = _figure(1.3 * len(timesteps) + 0.8, 1.45 * len(names) + 0.5)
    axes = np.atleast_2d(fig.subplots(len(names), len(timesteps), squeeze=False))
    for row, name in enumerate(names):
        for col, t in enumerate(timesteps):
            a = alpha_bars[name][t]
            xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
            pixels = to_uint8(xt).permute(1, 2, 0).numpy()
            ax = axes[row, col]
            if pixels.shape[-1] == 1:
                ax.imshow(pixels[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            else:
                ax.imshow(pixels, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"t = {t + 1}", fontsize=9)
            ax.set_xlabel(f"ᾱ = {float(a):.4g}", fontsize=7)
            if col == 0:
                ax.set_ylabel(name, fontsize=10)
    fig.suptitle(f"forward process q(x_t | x_0), T = {num_steps}, same noise in every row")
    return _save(fig, path)


def digits_image(index: int = 0, size: int = 64) -> torch.Tensor:
    """Image ``index`` of the built-in digits as (1, size, size) in [-1, 1], resized like the
    ``digits`` data source (only this one image is resampled)."""
    from sklearn.datasets import load_digits

    from ddpmkit.data import _resize_square_float, from_uint8

    images = load_digits().images
    if not 0 <= index < len(images):
        raise ConfigError(f"digit index must lie in [0, {len(images) - 1}], got {index}")
    arr = np.rint(np.asarray(images[index : index + 1], dtype=np.float64) * 255.0 / 16.0)
    arr = np.clip(arr, 0, 255).astype(np.uint8)[..., None]
    arr = _resize_square_float(arr, size, progress=False, desc="")
    return from_uint8(torch.from_numpy(arr[0]).permute(2, 0, 1).contiguous())


# ---------------------------------------------------------------------- schedules
def plot_alpha_bar(schedules: Sequence[str], path: str | Path, num_steps: int = 1000) -> Path:
    """ᾱ_t against t/T for each schedule (left) and the log signal-to-noise ratio
    log(ᾱ_t/(1−ᾱ_t)) (right), computed in float64."""
    from ddpmkit.schedules import make_schedule

    _check_steps(num_steps)
    names = _schedule_names(schedules)
    fig = _figure(10.0, 4.0)
    left, right = fig.subplots(1, 2)
    x = (np.arange(num_steps) + 1) / num_steps
    for name in names:
        alpha_bar = make_schedule(name, num_steps).alphas_cumprod
        log_snr = (torch.log(alpha_bar) - torch.log1p(-alpha_bar)).numpy()
        left.plot(x, alpha_bar.numpy(), label=name)
        right.plot(x, log_snr, label=name)
    left.set(xlabel="t / T", ylabel="ᾱ_t", title="signal kept: ᾱ_t", ylim=(-0.02, 1.02))
    right.set(xlabel="t / T", ylabel="log(ᾱ_t / (1 − ᾱ_t))", title="log SNR")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"noise schedules, T = {num_steps}")
    return _save(fig, path)


# ---------------------------------------------------------------------- time embedding
def plot_time_embedding(dim: int, path: str | Path, num_steps: int = 1000) -> Path:
    """Heat map of the sinusoidal time embedding of t = 0 … T−1 (rows) over its ``dim``
    features (columns: sines, then cosines), as the U-Net receives it."""
    from ddpmkit.nn.embeddings import timestep_embedding

    _check_steps(num_steps)
    emb = timestep_embedding(torch.arange(num_steps), dim).numpy()
    fig = _figure(8.0, 5.0)
    ax = fig.subplots()
    image = ax.imshow(
        emb, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest", origin="upper"
    )
    if dim >= 4:
        ax.axvline(dim // 2 - 0.5, color="black", linewidth=0.8)
    ax.set(
        xlabel=f"dimension (0–{dim // 2 - 1}: sin, {dim // 2}–{2 * (dim // 2) - 1}: cos)",
        ylabel="timestep t",
        title=f"sinusoidal time embedding, dim = {dim}",
    )
    fig.colorbar(image, ax=ax)
    return _save(fig, path)


# ---------------------------------------------------------------------- training curves
def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``run_dir/metrics.jsonl``; a last line cut short by a crash is skipped."""
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise RunDirError(f"run directory '{run.path}' not found")
    if not run.metrics_path.is_file():
        raise RunDirError(f"'{run.path}' has no {METRICS_FILE}: train first with `ddpm train`")
    return run.read_metrics()


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _series(records: Sequence[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the records that hold a finite number under both ``step`` and ``key``."""
    pairs = [(_number(r.get("step")), _number(r.get(key))) for r in records]
    pairs = [(s, v) for s, v in pairs if s is not None and v is not None]
    return np.array([s for s, _ in pairs]), np.array([v for _, v in pairs])


def ema_smooth(values: np.ndarray, weight: float = 0.9) -> np.ndarray:
    """Bias-corrected exponential moving average (as TensorBoard's smoothing slider)."""
    out, average = np.empty(len(values)), 0.0
    for i, value in enumerate(values):
        average = weight * average + (1 - weight) * value
        out[i] = average / (1 - weight ** (i + 1))
    return out


def _log_scale_if_positive(ax: Any, *arrays: np.ndarray) -> None:
    if all(len(a) == 0 or bool((a > 0).all()) for a in arrays):
        ax.set_yscale("log")


def plot_training_curves(metrics: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Loss against step (raw and smoothed) and the loss per quartile of t, from the records of
    metrics.jsonl (:func:`read_metrics`); records that lack a key are left out of its curve."""
    if not metrics:
        raise ConfigError("no metrics to plot: the run has not logged a step yet")
    steps, loss = _series(metrics, "loss")
    if len(steps) == 0:
        raise ConfigError("no metrics record holds both 'step' and 'loss'")
    fig = _figure(11.0, 4.0)
    left, right = fig.subplots(1, 2)
    left.plot(steps, loss, color="tab:blue", alpha=0.35, linewidth=1, label="loss")
    smooth = ema_smooth(loss)
    left.plot(steps, smooth, color="tab:blue", linewidth=1.8, label="smoothed (EMA 0.9)")
    _log_scale_if_positive(left, loss, smooth)
    left.set(xlabel="step", ylabel="loss", title="training loss")
    left.legend()
    quartiles = []
    for q in range(1, 5):
        q_steps, q_loss = _series(metrics, f"loss_t_q{q}")
        if len(q_steps):
            low, high = (q - 1) * 25, q * 25
            right.plot(q_steps, q_loss, linewidth=1.2, label=f"t in {low}–{high}% of T")
            quartiles.append(q_loss)
    if quartiles:
        _log_scale_if_positive(right, *quartiles)
        right.legend()
    else:
        right.text(0.5, 0.5, "no per-t losses logged", ha="center", va="center")
    right.set(xlabel="step", ylabel="loss", title="loss per quartile of t")
    for ax in (left, right):
        ax.grid(alpha=0.3, which="both")
    return _save(fig, path)


# ---------------------------------------------------------------------- quality vs NFE
def read_eval_results(run_dir: str | Path) -> list[dict[str, Any]]:
    """The ``results`` rows of ``run_dir/eval.json`` written by ``ddpm eval``."""
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise RunDirError(f"run directory '{run.path}' not found")
    if not run.eval_path.is_file():
        raise ConfigError(
            f"'{run.path}' has no {EVAL_FILE}: run `ddpm eval {run.path} --steps 10,20,50 "
            "--sampler ddim,dpm++` first"
        )
    path = run.eval_path
    try:
        data = run.read_json(EVAL_FILE)
    except RunDirError as err:
        raise ConfigError(f"{err}: run `ddpm eval` again") from None
    rows = data.get("results") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise ConfigError(f"{path} has no 'results' list: run `ddpm eval` again")
    return [row for row in rows if isinstance(row, dict)]


def _spread_ticks(values: list[float], min_decades: float = 0.1) -> list[float]:
    """Tick positions on a log axis at least ``min_decades`` apart, so that 9 and 10 (Heun's
    2K − 1 calls beside another sampler's K) do not print over each other; of two close values
    the rounder one (a multiple of 10) is kept."""
    kept: list[float] = []
    for v in values:
        if kept and np.log10(v / kept[-1]) < min_decades:
            if v % 10 == 0 and kept[-1] % 10 != 0:
                kept[-1] = v
            continue
        kept.append(v)
    return kept


def forward_image(spec: str, size: int, gray: bool = False) -> torch.Tensor:
    """The image of ``ddpm plot forward``: a file, or ``digits`` (the first built-in digit; a
    file named digits is ``./digits``)."""
    if spec == "digits":
        return digits_image(0, size=size)
    from ddpmkit.data import load_image

    return load_image(spec, size=size, channels=1 if gray else 3)


def plot_quality_vs_nfe(
    rows: Sequence[dict[str, Any]], path: str | Path, metric: str = "fid"
) -> Path:
    """Sample quality against the number of network calls: one line per sampler, NFE on a log
    axis. ``metric`` is ``fid`` or ``kid`` (the rows' ``kid_mean``, with ``kid_std`` as error
    bars where present); rows without the metric are left out."""
    if metric not in QUALITY_METRICS:
        raise ConfigError(f"unknown metric '{metric}': choose fid or kid")
    key = QUALITY_METRICS[metric]
    by_sampler: dict[str, list[tuple[float, float, float]]] = {}
    for row in rows:
        nfe, value = _number(row.get("nfe")), _number(row.get(key))
        if nfe is None or value is None or nfe <= 0:
            continue
        spread = _number(row.get("kid_std")) if key == "kid_mean" else None
        by_sampler.setdefault(str(row.get("sampler", "?")), []).append((nfe, value, spread or 0.0))
    if not by_sampler:
        raise ConfigError(f"no evaluation result holds both 'nfe' and '{key}'")
    fig = _figure(6.5, 4.5)
    ax = fig.subplots()
    values = []
    for sampler, points in sorted(by_sampler.items()):
        points.sort()
        nfe, value, spread = (np.array(column) for column in zip(*points, strict=True))
        values.append(value)
        if key == "kid_mean" and spread.any():
            ax.errorbar(nfe, value, yerr=spread, marker="o", capsize=3, label=sampler)
        else:
            ax.plot(nfe, value, marker="o", label=sampler)
    ax.set_xscale("log")
    if key == "fid":
        _log_scale_if_positive(ax, *values)
        if ax.get_yscale() == "log":  # 30, 20, 10, 6 rather than 3×10¹, 2×10¹ …
            from matplotlib.ticker import FuncFormatter

            plain = FuncFormatter(lambda v, _: f"{v:g}")
            ax.yaxis.set_major_formatter(plain)
            low, high = min(v.min() for v in values), max(v.max() for v in values)
            if high < 10 * low:  # less than a decade: label the minor ticks too
                ax.yaxis.set_minor_formatter(plain)
    all_nfe = _spread_ticks(sorted({p[0] for points in by_sampler.values() for p in points}))
    ax.set_xticks(all_nfe, [f"{n:g}" for n in all_nfe])
    ax.set_xticks([], minor=True)
    label = "FID" if key == "fid" else "KID"
    ax.set(xlabel="network calls (NFE)", ylabel=f"{label} (lower is better)")
    ax.set_title(f"{label} against sampling cost")
    ax.grid(alpha=0.3, which="both")
    ax.legend(title="sampler")
    return _save(fig, path)


# ---------------------------------------------------------------------- guidance trade-off
def plot_guidance_tradeoff(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """FID against class accuracy across guidance weights: one line per (sampler, steps), each
    point labelled with its weight w (the guidance trade-off curve)."""
    curves: dict[str, list[tuple[float, float, float]]] = {}
    for row in rows:
        accuracy, fid = _number(row.get("accuracy")), _number(row.get("fid"))
        weight = _number(row.get("guidance")) or 0.0
        if accuracy is None or fid is None:
            continue
        name = f"{row.get('sampler', '?')}, {row.get('steps', '?')} steps"
        curves.setdefault(name, []).append((weight, accuracy, fid))
    if not curves:
        raise ConfigError("no evaluation result holds both 'accuracy' and 'fid'")
    fig = _figure(6.5, 4.5)
    ax = fig.subplots()
    for name, points in sorted(curves.items()):
        points.sort()
        ax.plot([p[1] for p in points], [p[2] for p in points], marker="o", label=name)
        for weight, accuracy, fid in points:
            ax.annotate(f"w={weight:g}", (accuracy, fid), textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("class accuracy of the samples")
    ax.set_ylabel("FID")
    ax.set_title("classifier-free guidance: fidelity against diversity")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, path)
