"""`ddpm eval` end to end on a tiny run: eval.json, merging, the npz path and user errors."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import shapes_array, tiny_overrides, train_run
from ddpmkit.cli import main
from ddpmkit.evaluation.quality import run_eval
from ddpmkit.metrics.inception import random_inception_state


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, shapes_npz) -> Path:
    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert train_run(out, tiny_overrides(shapes_npz, "train.steps=4")).step == 4
    return out


def evaluate_run(run: Path, cache: Path, **options):
    """What `ddpm eval RUN --cache-dir CACHE --no-progress --features digits` asks the library
    for, with ``options`` for the other flags."""
    done = run_eval(run, cache_dir=cache, progress=False, features="digits", **options)
    assert done is not None  # the only process scored and wrote
    return done


def eval_command(run: Path, cache: Path, *args: str) -> int:
    return main(
        [
            "eval",
            str(run),
            "--cache-dir",
            str(cache),
            "--no-progress",
            "--features",
            "digits",
            *args,
        ]
    )


def test_eval_writes_one_row_per_sampler_and_steps_and_merges_later_calls(tiny_run, tmp_path):
    out = tmp_path / "eval.json"
    evaluate_run(
        tiny_run, tmp_path, n=12, batch_size=8, samplers=["ddim", "dpm++"], steps=[3, 5], out=out
    )
    report = json.loads(out.read_text())
    assert report["features"] == "digits" and report["weights"] == "ema"
    assert report["reference"]["n"] == 256
    assert report["reference_halves_fid"] > 0
    rows = {(r["sampler"], r["steps"]): r for r in report["results"]}
    assert set(rows) == {("ddim", 3), ("ddim", 5), ("dpm++", 3), ("dpm++", 5)}
    for (_, steps), row in rows.items():
        assert row["nfe"] == steps and row["n"] == 12
        assert row["fid"] >= 0 and 0 <= row["precision"] <= 1 and 0 <= row["recall"] <= 1
        assert np.isfinite(row["kid_mean"]) and row["kid_std"] >= 0
    assert out.with_suffix(".md").read_text().count("\n") == 2 + 4
    assert (tmp_path / "quality_vs_nfe.png").stat().st_size > 0

    evaluate_run(tiny_run, tmp_path, n=12, samplers=["heun"], steps=[3], out=out)
    rows = {(r["sampler"], r["steps"]): r for r in json.loads(out.read_text())["results"]}
    assert len(rows) == 5 and rows[("heun", 3)]["nfe"] == 5


def test_eval_is_reproducible_and_uses_the_feature_cache(tiny_run, tmp_path):
    options = {"n": 10, "samplers": ["ddim"], "steps": [4]}
    evaluate_run(tiny_run, tmp_path, **options, out=tmp_path / "a.json")
    assert len(list((tmp_path / "reference").iterdir())) == 1
    evaluate_run(tiny_run, tmp_path, **options, out=tmp_path / "b.json")
    assert len(list((tmp_path / "reference").iterdir())) == 1
    a = json.loads((tmp_path / "a.json").read_text())["results"][0]
    b = json.loads((tmp_path / "b.json").read_text())["results"][0]
    assert a["fid"] == b["fid"] and a["kid_mean"] == b["kid_mean"]


def test_the_data_itself_scores_a_perfect_fid(tiny_run, tmp_path):
    """Scoring the training images against themselves: FID 0, precision = recall = 1."""
    npz = tmp_path / "real.npz"
    np.savez(npz, arr_0=shapes_array())
    out = tmp_path / "eval.json"
    evaluate_run(tiny_run, tmp_path, samples=npz, out=out)
    (row,) = json.loads(out.read_text())["results"]
    assert row["sampler"] == "npz" and row["n"] == 256
    assert row["fid"] == pytest.approx(0.0, abs=1e-6)
    assert row["precision"] == 1.0 and row["recall"] == 1.0


@pytest.mark.parametrize(
    "args,message",
    [
        (["--sampler", "euler"], "unknown sampler"),
        (["--steps", "10,x"], "comma-separated integers"),
        (["--steps", "51"], "steps must be between"),
        (["--n", "1"], "--n must be"),
        (["--samples", "missing.npz"], "does not exist"),
        (["--features", "inception"], "no Inception-v3 FID weights"),
        (["--preset", "paper", "--features", "digits"], "drop --features digits"),
    ],
)
def test_user_errors_are_one_line(tiny_run, tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    assert eval_command(tiny_run, tmp_path, "--n", "4", *args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("inception") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(random_inception_state(seed=2), path)
    return path


def test_paper_preset_uses_inception_and_warns_below_50000(tiny_run, tmp_path, monkeypatch):
    """The preset picks Inception features and warns, before scoring, for the reference set and
    for --samples smaller than 50,000 images. (The random-weight Inception run itself is
    tests/test_fid.py's end-to-end test; here the extractor and the scoring are stand-ins.)"""
    import ddpmkit.evaluate
    from ddpmkit.evaluate import EvalReport, EvalRow

    chosen, warned, order = [], [], []

    def fake_evaluate(run, request, extractor, reference, weights, *args):
        order.append("scored")
        row = EvalRow("npz", 0, 0, 6, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0)
        return EvalReport("inception", "fp", {}, run.step, weights, 0.5, [row])

    monkeypatch.setattr(ddpmkit.evaluate, "evaluate", fake_evaluate)
    monkeypatch.setattr(ddpmkit.evaluate, "reference_for", _tiny_reference)
    monkeypatch.setattr(
        "ddpmkit.metrics.extractors.load_extractor", lambda name, **k: chosen.append(name)
    )
    np.savez(tmp_path / "s.npz", arr_0=np.zeros((6, 8, 8, 1), np.uint8))
    outcome = run_eval(
        tiny_run,
        preset="paper",
        samples=tmp_path / "s.npz",
        out=tmp_path / "eval.json",
        progress=False,
        warn=lambda message: (warned.append(message), order.append("warned")),
    )
    assert chosen == ["inception"] and outcome is not None
    assert order == ["scored", "warned"]  # the reference is big enough; the samples are not
    assert len(warned) == 1 and "s.npz has 6 images, fewer than the 50,000" in warned[0]
    monkeypatch.setattr(ddpmkit.evaluate, "reference_for", _small_reference)
    warned.clear(), order.clear()
    run_eval(
        tiny_run,
        preset="paper",
        samples=tmp_path / "s.npz",
        out=tmp_path / "e2.json",
        progress=False,
        warn=lambda message: (warned.append(message), order.append("w")),
    )
    assert order == ["w", "scored", "w"]
    assert "the reference set has 8 images, fewer than the 50,000" in warned[0]


def _small_reference(data, extractor, cache_dir=None, progress=True, distributed=False):
    from ddpmkit.evaluate import Reference
    from ddpmkit.metrics.frechet import GaussianStats

    features = np.random.default_rng(0).normal(size=(8, 2))
    return Reference(features, GaussianStats.of(features), data.source, False)


def test_paper_preset_draws_50000_samples_unless_told(tiny_run, tmp_path, monkeypatch):
    import ddpmkit.evaluate

    seen, warned = [], []

    def fake_evaluate(run, request, *args, **kwargs):
        seen.append(request.n)
        raise SystemExit(0)

    monkeypatch.setattr(ddpmkit.evaluate, "evaluate", fake_evaluate)
    monkeypatch.setattr(ddpmkit.evaluate, "reference_for", _tiny_reference)
    monkeypatch.setattr("ddpmkit.metrics.extractors.load_extractor", lambda *a, **k: None)
    for n in (None, 100):  # `ddpm eval RUN --preset paper [--n 100]`
        with pytest.raises(SystemExit):
            run_eval(tiny_run, n=n, preset="paper", progress=False, warn=warned.append)
    assert seen == [50_000, 100]
    err = "\n".join(warned)  # what `ddpm eval` prints on stderr, one warning a line
    assert "--n has 100 images" in err and "--n has 50,000" not in err


def _tiny_reference(data, extractor, cache_dir=None, progress=True, distributed=False):
    from ddpmkit.evaluate import Reference
    from ddpmkit.metrics.frechet import GaussianStats

    features = np.random.default_rng(0).normal(size=(60_000, 2))
    return Reference(features, GaussianStats.of(features), data.source, False)
