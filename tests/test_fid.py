"""``ddpm fid A B`` and :mod:`ddpmkit.fid`: image sets, statistics files (pytorch-fid's and the
OpenAI suite's layouts), the reader's errors, the paper preset and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import shapes_array
from ddpmkit.cli import main
from ddpmkit.errors import ConfigError, DataError
from ddpmkit.fid import FidRequest, compute_fid, read_statistics, save_statistics
from ddpmkit.metrics.extractors import extract_features, load_extractor
from ddpmkit.metrics.frechet import GaussianStats, frechet_distance
from ddpmkit.metrics.inception import random_inception_state


@pytest.fixture(autouse=True)
def _no_real_weights(tmp_path, monkeypatch):
    """No test may find Inception weights by accident, nor write to the real cache."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setenv("DDPMKIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> tuple[Path, Path, np.ndarray]:
    """Two .npz files of different 8×8 shape images (A: the first 128, B: the other 128)."""
    folder = tmp_path_factory.mktemp("fid")
    images = shapes_array(256)
    rng = np.random.default_rng(0)
    noisy = np.clip(images.astype(int) + rng.integers(-40, 41, images.shape), 0, 255)
    noisy = noisy.astype(np.uint8)
    np.savez(folder / "a.npz", arr_0=noisy[:128])
    np.savez(folder / "b.npz", arr_0=noisy[128:])
    return folder / "a.npz", folder / "b.npz", noisy


@pytest.fixture(scope="module")
def digits():
    return load_extractor("digits")


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("inception") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(random_inception_state(seed=1), path)
    return path


def digits_request(**kwargs) -> FidRequest:
    return FidRequest(features="digits", **kwargs)


def features_of(images: np.ndarray, extractor) -> np.ndarray:
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    return extract_features(extractor, tensor, progress=False)


# --------------------------------------------------------------------------------------------
# images against images


def test_a_side_against_itself_scores_zero(shapes):
    a, _, _ = shapes
    report = compute_fid(str(a), str(a), digits_request(), progress=False)
    assert report.fid == pytest.approx(0.0, abs=1e-6)
    assert report.precision == 1.0 and report.recall == 1.0
    assert report.kid_mean <= 0  # the unbiased MMD² of a set with itself: slightly negative
    assert (report.a.kind, report.a.n_images, report.a.dims) == ("images", 128, 128)
    assert report.image_size == 8 and report.channels == 1  # the npz's native size
    assert report.warnings == []


def test_images_fid_matches_the_metric_on_features(shapes, digits):
    a, b, images = shapes
    report = compute_fid(str(a), str(b), digits_request(), progress=False)
    fa, fb = features_of(images[:128], digits), features_of(images[128:], digits)
    # B is the reference and goes first, as in ddpm eval (FID's matrix root is symmetric in
    # exact arithmetic only: the other order differs by ~1e-6 relative on these singular sets)
    expected = frechet_distance(GaussianStats.of(fb), GaussianStats.of(fa))
    assert report.fid == pytest.approx(expected, rel=1e-9) and report.fid > 0
    assert 0 <= report.precision <= 1 and 0 <= report.recall <= 1
    assert report.kid_subset_size == 128


def test_an_image_folder_equals_its_npz(shapes, tmp_path):
    a, _, images = shapes
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, image in enumerate(images[:128]):
        Image.fromarray(image[..., 0]).save(folder / f"{i:03d}.png")
    report = compute_fid(str(folder), str(a), digits_request(image_size=8), progress=False)
    assert report.fid == pytest.approx(0.0, abs=1e-6)


def test_the_reference_side_is_cached(shapes, tmp_path):
    a, b, _ = shapes
    cache = tmp_path / "features"
    first = compute_fid(str(a), str(b), digits_request(cache_dir=cache), progress=False)
    assert len(list((cache / "reference").iterdir())) == 1  # B only
    second = compute_fid(str(a), str(b), digits_request(cache_dir=cache), progress=False)
    assert second.fid == pytest.approx(first.fid, rel=1e-6)


# --------------------------------------------------------------------------------------------
# statistics files


def test_statistics_written_from_features_give_the_same_fid(shapes, digits, tmp_path):
    a, b, images = shapes
    from_images = compute_fid(str(a), str(b), digits_request(), progress=False).fid
    stats_b = GaussianStats.of(features_of(images[128:], digits))
    ours = save_statistics(tmp_path / "b_stats.npz", stats_b)
    # pytorch-fid's layout: float32, compressed, nothing but mu and sigma
    theirs = tmp_path / "b_pytorch_fid.npz"
    np.savez_compressed(theirs, mu=stats_b.mean.astype(np.float32), sigma=stats_b.cov)
    for path in (ours, theirs):
        report = compute_fid(str(a), str(path), digits_request(), progress=False)
        assert report.fid == pytest.approx(from_images, rel=1e-6)
        assert report.b.kind == "statistics" and report.kid_mean is None
        assert report.precision is None
    # two statistics files: no extractor is loaded at all
    stats_a = save_statistics(
        tmp_path / "a_stats.npz", GaussianStats.of(features_of(images[:128], digits))
    )
    report = compute_fid(str(stats_a), str(ours), FidRequest(), progress=False)
    assert report.fid == pytest.approx(from_images, rel=1e-9)
    assert report.features is None and report.image_size is None


def test_the_statistics_reader(digits, tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 6))
    path = save_statistics(tmp_path / "s.npz", GaussianStats.of(x))
    stats = read_statistics(path)
    np.testing.assert_array_equal(stats.mean, x.mean(0))
    np.testing.assert_array_equal(stats.cov, np.cov(x, rowvar=False))
    assert stats.n == 50 and stats.mean.dtype == np.float64
    other = tmp_path / "pf.npz"
    np.savez(other, mu=x.mean(0).astype(np.float32), sigma=np.cov(x, rowvar=False))
    assert read_statistics(other).n == 0  # unknown


def test_openai_reference_batches_use_stored_statistics_and_images(shapes, digits, tmp_path):
    """VIRTUAL_*.npz: arr_0 images (for KID, precision, recall) next to mu/sigma of the whole
    data set (for FID) and spatial statistics, which are ignored."""
    a, b, images = shapes
    full = GaussianStats.of(features_of(images, digits))  # "the whole data set"
    ref = tmp_path / "VIRTUAL_shapes.npz"
    np.savez(
        ref,
        arr_0=images[128:],
        mu=full.mean,
        sigma=full.cov,
        mu_s=np.zeros(7),
        sigma_s=np.eye(7),
    )
    report = compute_fid(str(a), str(ref), digits_request(), progress=False)
    fa = features_of(images[:128], digits)
    # the reference first (see test_images_fid_matches_the_metric_on_features)
    assert report.fid == pytest.approx(frechet_distance(full, GaussianStats.of(fa)), rel=1e-9)
    assert report.b.kind == "images+statistics" and report.b.n_images == 128
    plain = compute_fid(str(a), str(b), digits_request(), progress=False)
    assert report.kid_mean == pytest.approx(plain.kid_mean, rel=1e-9)
    assert report.precision == plain.precision and report.recall == plain.recall
    # statistics on one side only: its images are not needed
    alone = compute_fid(str(ref), str(ref), digits_request(), progress=False)
    assert alone.fid == pytest.approx(0.0, abs=1e-9)


def _write(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"mu": np.zeros(3)}, "'sigma' is missing"),
        ({"mu": np.zeros(3), "sigma": np.eye(4)}, r"does not fit 'mu' of 3 dimensions"),
        ({"mu": np.zeros((3, 1)), "sigma": np.eye(3)}, r"expected shape \(D,\)"),
        ({"mu": np.zeros(3), "sigma": np.zeros((3, 2))}, r"expected shape \(D, D\)"),
        ({"mu": np.zeros(3, np.int64), "sigma": np.eye(3)}, "expected a float array"),
        ({"mu": np.array([0.0, np.nan, 0.0]), "sigma": np.eye(3)}, "NaN or infinite"),
        ({"mu": np.array([{}], dtype=object), "sigma": np.eye(1)}, "expected a float array"),
    ],
)
def test_bad_statistics_files(tmp_path, arrays, message):
    path = _write(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message) as info:
        read_statistics(path)
    assert "\n" not in str(info.value) and "bad.npz" in str(info.value)


def test_corrupt_statistics_file(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        read_statistics(path)


def test_mismatched_dimensions(shapes, tmp_path, inception_weights):
    a, _, _ = shapes
    s3 = save_statistics(tmp_path / "s3.npz", GaussianStats(np.zeros(3), np.eye(3), 10))
    s4 = save_statistics(tmp_path / "s4.npz", GaussianStats(np.zeros(4), np.eye(4), 10))
    with pytest.raises(ConfigError, match="3-d and 4-d features"):
        compute_fid(str(s3), str(s4), FidRequest(), progress=False)
    with pytest.raises(ConfigError, match="3-d features but the digits extractor gives 128-d"):
        compute_fid(str(a), str(s3), digits_request(), progress=False)
    request = FidRequest(feature_weights=inception_weights)
    with pytest.raises(ConfigError, match="4-d features but the inception extractor gives 2048"):
        compute_fid(str(s4), str(a), request, progress=False)


# --------------------------------------------------------------------------------------------
# inception (random weights) and the paper preset


@pytest.mark.slow
def test_inception_end_to_end_with_random_weights(tmp_path, inception_weights):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (6, 24, 24, 3), dtype=np.uint8)
    np.savez(tmp_path / "x.npz", arr_0=images)
    np.savez(tmp_path / "y.npz", arr_0=images[:, ::-1])
    request = FidRequest(feature_weights=inception_weights, preset="paper")
    same = compute_fid(str(tmp_path / "x.npz"), str(tmp_path / "x.npz"), request, progress=False)
    assert same.features == "inception" and same.a.dims == 2048 and same.image_size == 24
    assert same.fid == pytest.approx(0.0, abs=1e-6)
    assert len(same.warnings) == 2 and all("50,000" in w for w in same.warnings)
    other = compute_fid(str(tmp_path / "x.npz"), str(tmp_path / "y.npz"), request, progress=False)
    assert other.fid > 0 and other.precision is not None


def test_paper_preset_needs_inception(shapes):
    a, b, _ = shapes
    with pytest.raises(ConfigError, match="drop --features digits"):
        compute_fid(str(a), str(b), FidRequest(features="digits", preset="paper"), progress=False)


# --------------------------------------------------------------------------------------------
# command line


def test_cli_prints_and_writes_json(shapes, tmp_path, capsys):
    a, b, _ = shapes
    out, stats = tmp_path / "fid.json", tmp_path / "a_stats.npz"
    args = ["fid", str(a), str(b), "--features", "digits", "--no-progress", "--batch", "50"]
    assert main([*args, "--json", str(out), "--save-stats", str(stats)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert f"FID        {report['fid']:.4f}" in printed
    assert "KID" in printed and "precision" in printed and "recall" in printed
    assert report["features"] == "digits" and report["a"]["n_images"] == 128
    assert report["b"]["kind"] == "images" and report["image_size"] == 8
    assert set(report) >= {"kid_mean", "kid_std", "precision", "recall", "warnings"}
    # A's statistics, written by --save-stats, score the same against B
    assert main(["fid", str(stats), str(b), "--features", "digits", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"FID        {report['fid']:.4f}" in printed and "KID" not in printed


@pytest.mark.slow
def test_cli_paper_preset_warns(tmp_path, capsys, inception_weights):
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "x.npz", arr_0=rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8))
    x = str(tmp_path / "x.npz")
    args = ["fid", x, x, "--preset", "paper", "--feature-weights", str(inception_weights)]
    assert main([*args, "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("ddpm fid: warning: --preset paper") == 2
    assert "inception" in captured.out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.npz", "B"], "not found"),
        (["A", "B", "--batch", "0"], "--batch must be >= 1"),
        (["A", "B", "--size", "1"], "image_size"),
        (["A", "B"], "no Inception-v3 FID weights"),
        (["A", "B", "--preset", "paper", "--features", "digits"], "drop --features digits"),
        (["A", "JUNK"], "junk.npz"),
    ],
)
def test_cli_user_errors_are_one_line(shapes, tmp_path, capsys, args, message):
    a, b, _ = shapes
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"\x93NUMPY junk")
    names = {"A": str(a), "B": str(b), "JUNK": str(junk)}
    argv = [names.get(x, x) for x in args]
    if "--features" not in argv and "JUNK" in args:
        argv += ["--features", "digits"]
    assert main(["fid", *argv, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err and err.startswith("ddpm fid: error:")
