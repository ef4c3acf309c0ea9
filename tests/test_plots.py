"""matplotlib figures (ddpmkit.plots) and the `ddpm plot` command."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import temp_files, tiny_config
from ddpmkit import plots
from ddpmkit.cli import main
from ddpmkit.errors import ConfigError, RunDirError
from ddpmkit.train import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

SRC = Path(__file__).resolve().parent.parent / "src"
ALL = ["linear", "cosine", "quadratic", "sigmoid"]


def assert_png(path: Path) -> tuple[int, int]:
    """The file side of a figure: a readable, non-blank PNG written atomically (no temporary
    file left); returns its size. What each figure shows is checked on its data below."""
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG"
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[0] > 50 and pixels.shape[1] > 50
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1  # not blank
    assert temp_files(path.parent) == []
    return image.size


def eval_rows() -> list[dict]:
    rows = []
    for sampler, fid_at_10 in (("ddim", 30.0), ("dpm++", 12.0)):
        for nfe in (10, 20, 50):
            rows.append(
                {
                    "sampler": sampler,
                    "steps": nfe,
                    "nfe": nfe,
                    "fid": fid_at_10 * 10 / nfe,
                    "kid_mean": 0.01 * 10 / nfe,
                    "kid_std": 0.001,
                    "seconds": nfe / 10,
                }
            )
    return rows


@pytest.fixture(scope="module")
def run_dir(shapes_npz, tmp_path_factory) -> Path:
    """A tiny trained run whose metrics.jsonl has one record per step."""
    run = tmp_path_factory.mktemp("plots") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        Trainer(tiny_config(shapes_npz, "train.steps=6"), run, progress=False).train()
    finally:
        torch.set_num_threads(threads)
    return run


# ---------------------------------------------------------------------- optional import
@pytest.mark.slow
def test_importing_the_package_does_not_import_optional_packages():
    code = (
        "import sys, ddpmkit, ddpmkit.plots, ddpmkit.trackers, ddpmkit.training, ddpmkit.cli\n"
        "optional = {'matplotlib', 'tensorboard', 'wandb', 'mlflow', 'datasets', 'diffusers'}\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in optional]\n"
        "assert not heavy, heavy[:5]\n"
    )
    path = os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


@pytest.fixture
def no_matplotlib(monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)


def test_missing_matplotlib_is_a_config_error_with_the_install_hint(no_matplotlib, tmp_path):
    with pytest.raises(ConfigError, match=r"pip install 'ddpmkit\[plot\]'"):
        plots.plot_alpha_bar(ALL, tmp_path / "a.png")
    assert not (tmp_path / "a.png").exists()


def test_missing_matplotlib_in_the_cli(no_matplotlib, tmp_path, capsys):
    assert main(["plot", "embedding", "--out", str(tmp_path / "e.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ddpm plot: error:") and "ddpmkit[plot]" in err and "\n" not in err


# ---------------------------------------------------------------------- figures
def disk(size: int = 24) -> torch.Tensor:
    """A white disk on black, (1, size, size) in [-1, 1]."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    inside = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2
    return inside.float().unsqueeze(0) * 2 - 1


@pytest.mark.slow
def test_forward_process_figure(tmp_path):
    image = disk()
    path = plots.plot_forward_process(image, ALL, tmp_path / "forward.png", num=5, num_steps=200)
    assert path == tmp_path / "forward.png"
    width, height = assert_png(path)
    assert width > height  # 5 columns, 4 rows

    rgb = torch.rand(3, 20, 20, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert_png(plots.plot_forward_process(rgb, ["cosine"], tmp_path / "rgb.png", num=3))


def test_forward_process_figure_is_reproducible(tmp_path):
    image = disk(12)
    paths = [
        plots.plot_forward_process(image, ["linear"], tmp_path / f"{i}.png", num=3, seed=seed)
        for i, seed in enumerate((0, 0, 1))
    ]
    first, again, other = (p.read_bytes() for p in paths)
    assert first == again and first != other


def test_forward_process_rejects_bad_input(tmp_path):
    image = torch.zeros(1, 8, 8)
    with pytest.raises(ConfigError, match="unknown schedule 'lineal'"):
        plots.plot_forward_process(image, ["lineal"], tmp_path / "f.png")
    with pytest.raises(ConfigError, match="at least one schedule"):
        plots.plot_forward_process(image, [" "], tmp_path / "f.png")
    with pytest.raises(ConfigError, match=r"shape \(C, H, W\)"):
        plots.plot_forward_process(torch.zeros(8, 8), ["linear"], tmp_path / "f.png")
    with pytest.raises(ConfigError, match="columns must be >= 1"):
        plots.plot_forward_process(image, ["linear"], tmp_path / "f.png", num=0)
    with pytest.raises(ConfigError, match="is a folder"):
        plots.plot_forward_process(image, ["linear"], tmp_path, num=2)


def test_alpha_bar_figure(tmp_path):
    width, height = assert_png(plots.plot_alpha_bar(ALL, tmp_path / "ab.png", num_steps=100))
    assert width > height  # two panels side by side
    with pytest.raises(ConfigError, match="diffusion steps"):
        plots.plot_alpha_bar(ALL, tmp_path / "ab.png", num_steps=0)


@pytest.mark.slow
def test_time_embedding_figure(tmp_path):
    assert_png(plots.plot_time_embedding(32, tmp_path / "emb.png", num_steps=100))
    assert_png(plots.plot_time_embedding(3, tmp_path / "odd.png", num_steps=10))
    with pytest.raises(ConfigError, match="at least 2"):
        plots.plot_time_embedding(1, tmp_path / "emb.png")


# ---------------------------------------------------------------------- training curves
@pytest.mark.slow
def test_training_curves_of_a_real_run(run_dir, tmp_path):
    records = plots.read_metrics(run_dir)
    assert [r["step"] for r in records] == list(range(1, 7))
    assert_png(plots.plot_training_curves(records, tmp_path / "training.png"))


@pytest.mark.slow
def test_training_curves_skip_records_without_a_key(tmp_path):
    records = [
        {"step": s, "loss": 1 / s, **({"loss_t_q1": 2 / s} if s % 2 else {})} for s in range(1, 30)
    ]
    records += [{"step": 30}, {"loss": 0.1}, {"step": 31, "loss": float("nan")}]
    assert_png(plots.plot_training_curves(records, tmp_path / "a.png"))
    no_quartiles = [{"step": 1, "loss": -0.5}, {"step": 2, "loss": 0.25}]  # kl-like: linear axis
    assert_png(plots.plot_training_curves(no_quartiles, tmp_path / "b.png"))


def test_training_curves_need_records(tmp_path):
    with pytest.raises(ConfigError, match="no metrics"):
        plots.plot_training_curves([], tmp_path / "a.png")
    with pytest.raises(ConfigError, match="'step' and 'loss'"):
        plots.plot_training_curves([{"step": 1}, {"lr": 0.1}], tmp_path / "a.png")


def test_ema_smooth_is_bias_corrected():
    assert plots.ema_smooth(np.array([2.0, 2.0, 2.0])) == pytest.approx([2.0, 2.0, 2.0])
    smooth = plots.ema_smooth(np.array([1.0, 0.0]), weight=0.5)
    assert smooth == pytest.approx([1.0, 0.5 * 0.5 / 0.75])


def test_read_metrics_tolerates_a_truncated_last_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n\n{"step": 2, "lo')
    assert plots.read_metrics(tmp_path) == [{"step": 1, "loss": 0.5}]
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "lo\n{"step": 2, "loss": 0.5}\n')
    with pytest.raises(RunDirError, match="line 1"):
        plots.read_metrics(tmp_path)
    with pytest.raises(RunDirError, match="not found"):
        plots.read_metrics(tmp_path / "missing")
    (tmp_path / "metrics.jsonl").unlink()
    with pytest.raises(RunDirError, match="no metrics.jsonl"):
        plots.read_metrics(tmp_path)


# ---------------------------------------------------------------------- quality vs NFE
@pytest.mark.slow
def test_quality_vs_nfe_figure(tmp_path):
    rows = eval_rows()
    assert_png(plots.plot_quality_vs_nfe(rows, tmp_path / "fid.png"))
    partial = [*rows, {"sampler": "ddpm", "nfe": 1000}, {"sampler": "x", "fid": 3.0}]
    assert_png(plots.plot_quality_vs_nfe(partial, tmp_path / "partial.png"))
    with pytest.raises(ConfigError, match="unknown metric 'is'"):
        plots.plot_quality_vs_nfe(rows, tmp_path / "x.png", metric="is")
    with pytest.raises(ConfigError, match="'nfe' and 'fid'"):
        plots.plot_quality_vs_nfe([{"sampler": "ddim", "nfe": 10}], tmp_path / "x.png")


def test_read_eval_results(tmp_path):
    with pytest.raises(ConfigError, match=r"run `ddpm eval .* --steps 10,20,50"):
        plots.read_eval_results(tmp_path)
    (tmp_path / "eval.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        plots.read_eval_results(tmp_path)
    (tmp_path / "eval.json").write_text(json.dumps({"features": "digits", "results": eval_rows()}))
    assert plots.read_eval_results(tmp_path) == eval_rows()


# ---------------------------------------------------------------------- ddpm plot
def wrote(capsys) -> Path:
    out = capsys.readouterr().out.strip()
    assert out.startswith("wrote ")
    return Path(out.removeprefix("wrote "))


@pytest.mark.slow
def test_cli_plot_schedules_forward_embedding(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["plot", "schedules", "--num-steps", "100"]) == 0
    assert_png(tmp_path / wrote(capsys))
    digit = plots.digits_image(5, size=16)
    assert digit.shape == (1, 16, 16) and digit.min() == -1 and 0 < digit.max() <= 1
    assert main(["plot", "forward", "digits", "--num", "4", "--size", "16", "--out", "f.png"]) == 0
    assert wrote(capsys) == Path("f.png")
    assert_png(tmp_path / "f.png")
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), np.uint8)).save(photo)
    args = ["plot", "forward", str(photo), "--schedule", "cosine", "--num", "3", "--size", "16"]
    assert main([*args, "--gray", "--out", "g.png"]) == 0
    assert_png(tmp_path / wrote(capsys))
    assert main(["plot", "embedding", "--dim", "16", "--num-steps", "50"]) == 0
    assert wrote(capsys) == Path("time_embedding.png")
    assert_png(tmp_path / "time_embedding.png")


@pytest.mark.slow
def test_cli_plot_training_and_quality(run_dir, capsys):
    assert main(["plot", "training", str(run_dir)]) == 0
    assert wrote(capsys) == run_dir / "training.png"
    assert_png(run_dir / "training.png")
    eval_json = {"features": "digits", "n": 100, "step": 6, "results": eval_rows()}
    (run_dir / "eval.json").write_text(json.dumps(eval_json))
    try:
        assert main(["plot", "quality", str(run_dir), "--metric", "kid"]) == 0
        assert wrote(capsys) == run_dir / "quality_vs_nfe.png"
        assert_png(run_dir / "quality_vs_nfe.png")
    finally:
        (run_dir / "eval.json").unlink()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["plot", "quality", "{run}"], "has no eval.json: run `ddpm eval"),
        (["plot", "training", "{missing}"], "run directory '{missing}' not found"),
        (["plot", "quality", "{missing}"], "run directory '{missing}' not found"),
        (["plot", "forward", "{missing}/x.png"], "image '{missing}/x.png' not found"),
        (["plot", "forward", "digits", "--schedule", "cosinus"], "unknown schedule 'cosinus'"),
        (["plot", "forward", "digits", "--num", "0"], "columns must be >= 1"),
        (["plot", "schedules", "--num-steps", "0"], "diffusion steps must be an integer >= 1"),
        (["plot", "embedding", "--dim", "1"], "at least 2"),
    ],
)
def test_cli_plot_errors_exit_2_on_one_line(run_dir, tmp_path, capsys, argv, message):
    fill = {"run": str(run_dir), "missing": str(tmp_path / "missing")}
    argv = [a.format(**fill) for a in argv]
    assert main([*argv, "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ddpm plot: error: ")
    assert message.format(**fill) in err
    assert not (tmp_path / "x.png").exists()


def test_cli_plot_needs_a_figure_name(capsys):
    assert main(["plot"]) == 2  # a usage error: one line, exit 2, no traceback
    err = capsys.readouterr().err
    assert "WHAT" in err and err.count("\n") == 1


def test_log_snr_of_the_plotted_schedules_is_finite():
    """The right panel's values: log(ᾱ/(1−ᾱ)) stays finite at both ends in float64."""
    from ddpmkit.schedules import make_schedule

    for name in ALL:
        alpha_bar = make_schedule(name, 1000).alphas_cumprod
        log_snr = torch.log(alpha_bar) - torch.log1p(-alpha_bar)
        assert all(math.isfinite(v) for v in log_snr.tolist())
        assert bool((log_snr[1:] < log_snr[:-1]).all())  # decreasing in t


@pytest.fixture
def drawn(monkeypatch) -> list:
    """The matplotlib figures the plot functions save, to check what they show."""
    import ddpmkit.plots

    figures = []
    save = ddpmkit.plots._save

    def keep(fig, path):
        figures.append(fig)
        return save(fig, path)

    monkeypatch.setattr(ddpmkit.plots, "_save", keep)
    return figures


def test_the_schedules_figure_shows_the_published_alpha_bar_and_log_snr(tmp_path, drawn):
    """Each curve's data against ᾱ of the published formulas (tests/gaussian_oracle.py, in
    numpy, not ddpmkit's): the left panel ᾱ_t, the right one log(ᾱ_t/(1 − ᾱ_t)), at t/T."""
    from gaussian_oracle import cosine_alpha_bar, linear_alpha_bar

    plots.plot_alpha_bar(["linear", "cosine"], tmp_path / "s.png", num_steps=200)
    left, right = drawn[0].axes[:2]
    for name, oracle in (("linear", linear_alpha_bar), ("cosine", cosine_alpha_bar)):
        expected = oracle(200)
        (a,) = [line for line in left.get_lines() if line.get_label() == name]
        (b,) = [line for line in right.get_lines() if line.get_label() == name]
        np.testing.assert_allclose(a.get_xdata(), np.arange(1, 201) / 200)
        np.testing.assert_allclose(a.get_ydata(), expected, rtol=1e-10)
        np.testing.assert_allclose(b.get_ydata(), np.log(expected / (1 - expected)), rtol=1e-8)


def test_the_quality_figure_has_one_line_per_sampler_through_its_rows(tmp_path, drawn):
    """FID against NFE: a line per sampler whose points are exactly that sampler's rows, in
    NFE order, on a log NFE axis."""
    rows = eval_rows()
    plots.plot_quality_vs_nfe(list(reversed(rows)), tmp_path / "q.png")
    (ax,) = drawn[0].axes
    lines = {line.get_label(): line for line in ax.get_lines() if not line.get_label()[0] == "_"}
    assert set(lines) == {"ddim", "dpm++"} and ax.get_xscale() == "log"
    for sampler, line in lines.items():
        mine = sorted((r["nfe"], r["fid"]) for r in rows if r["sampler"] == sampler)
        np.testing.assert_allclose(line.get_xdata(), [n for n, _ in mine])
        np.testing.assert_allclose(line.get_ydata(), [f for _, f in mine])


def test_the_forward_figure_shows_x_t_of_the_published_alpha_bar(tmp_path, drawn):
    """Each panel's pixels are to_uint8(√ᾱ_t x₀ + √(1−ᾱ_t) ε) with ᾱ of the published linear
    schedule (numpy oracle) at the column's t and one ε for every panel (eq. 4); rows are
    schedules, columns evenly spaced t titled with the paper's 1-based t."""
    from gaussian_oracle import linear_alpha_bar

    image = disk(12).double()
    plots.plot_forward_process(image, ["linear", "cosine"], tmp_path / "f.png", num=3, seed=5)
    axes = np.array(drawn[0].axes).reshape(2, 3)
    noise = torch.randn(
        image.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64
    )
    alpha_bar = linear_alpha_bar(1000)
    columns = np.round(np.linspace(0, 999, 3)).astype(int)  # evenly spaced t of 0 … 999
    for col, t in enumerate(columns):
        assert axes[0, col].get_title() == f"t = {t + 1}"
        a = alpha_bar[t]
        x_t = (np.sqrt(a) * image.numpy() + np.sqrt(1 - a) * noise.numpy())[0]
        expected = np.clip(np.round((x_t + 1) * 127.5), 0, 255)
        shown = np.asarray(axes[0, col].get_images()[0].get_array())
        assert np.abs(shown.astype(float) - expected).max() <= 1  # rounding of the uint8 step
    # the cosine row differs from the linear one only through ᾱ_t: the same ε
    first = np.asarray(axes[1, 2].get_images()[0].get_array()).astype(float)
    assert np.corrcoef(first.ravel(), (noise[0].numpy() + 1).ravel())[0, 1] > 0.95


def test_the_embedding_figure_shows_sines_then_cosines_of_t(tmp_path, drawn):
    """The heat map is [sin(t·ω_k), cos(t·ω_k)], k = 0 … d/2−1, with Ho et al.'s (2020)
    frequencies ω_k = 10000^(−k/(d/2−1)) (their get_timestep_embedding, written out here),
    rows t = 0 … T−1."""
    plots.plot_time_embedding(8, tmp_path / "e.png", num_steps=50)
    shown = np.asarray(drawn[0].axes[0].get_images()[0].get_array())
    t = np.arange(50)[:, None]
    omega = 10000.0 ** (-np.arange(4) / 3)
    np.testing.assert_allclose(shown, np.hstack([np.sin(t * omega), np.cos(t * omega)]), atol=1e-6)


def test_the_training_figure_draws_the_logged_losses(tmp_path, drawn):
    """Left: the raw losses at their steps and a bias-corrected EMA of them (computed here);
    right: one curve per logged quartile of t, through exactly its records."""
    records = [
        {"step": s, "loss": 1 / s, "loss_t_q1": 2 / s, "loss_t_q4": 0.5} for s in range(1, 9)
    ]
    records[3].pop("loss_t_q1")
    plots.plot_training_curves(records, tmp_path / "t.png")
    left, right = drawn[0].axes[:2]
    raw, smooth = left.get_lines()[:2]
    np.testing.assert_allclose(raw.get_xdata(), range(1, 9))
    np.testing.assert_allclose(raw.get_ydata(), [1 / s for s in range(1, 9)])
    ema, expected = 0.0, []
    for i, s in enumerate(range(1, 9)):
        ema = 0.9 * ema + 0.1 / s
        expected.append(ema / (1 - 0.9 ** (i + 1)))
    np.testing.assert_allclose(smooth.get_ydata(), expected)
    assert left.get_yscale() == "log"
    q1, q4 = right.get_lines()
    np.testing.assert_allclose(q1.get_xdata(), [1, 2, 3, 5, 6, 7, 8])
    np.testing.assert_allclose(q4.get_ydata(), [0.5] * 8)
    assert q1.get_label() == "t in 0–25% of T" and q4.get_label() == "t in 75–100% of T"
