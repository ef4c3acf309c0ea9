"""Feature extraction split between processes (``torchrun ... ddpm eval``): each process embeds
its share of whole batches, and everyone gets the features one process computes alone."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ddpm_launcher, run_two_processes, tiny_overrides
from ddpmkit.cli import main
from ddpmkit.sharding import shard_range


@pytest.mark.parametrize("world", [1, 2, 3, 5])
@pytest.mark.parametrize(("count", "batch"), [(24, 5), (7, 2), (10, 10), (3, 4)])
def test_shards_are_whole_batches_that_cover_every_image_once(count, batch, world):
    ranges = [shard_range(count, batch, rank, world) for rank in range(world)]
    covered = [i for first, last in ranges for i in range(first, last)]
    assert covered == list(range(count))
    for first, last in ranges:
        assert first % batch == 0 or first == count
        assert (last - first) % batch == 0 or last == count


class _Recorder:
    """A stand-in extractor: feature = (mean pixel, batch size it came in); records batches."""

    name, fingerprint, dims = "recorder", "0", 2

    def __init__(self) -> None:
        self.seen: list[int] = []

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.seen.extend(images[:, 0, 0, 0].tolist())
        mean = images.double().mean(dim=(1, 2, 3))
        return torch.stack([mean, torch.full_like(mean, len(images))], dim=1)


def _images(n: int) -> torch.Tensor:
    return torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()


def _extract_rank(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from ddpmkit.metrics.extractors import extract_features

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    recorder = _Recorder()
    features = extract_features(
        recorder, _images(23), batch_size=4, progress=False, distributed=True
    )
    # one batch for two processes: the second has an empty share and still joins the gather
    few = extract_features(recorder, _images(3), batch_size=4, progress=False, distributed=True)
    np.save(f"{out}-{rank}-few.npy", few)
    np.save(f"{out}-{rank}-features.npy", features)
    np.save(f"{out}-{rank}-seen.npy", np.asarray(recorder.seen))
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_embed_half_the_images_each_and_both_get_all_features(tmp_path):
    from ddpmkit.metrics.extractors import extract_features

    out = str(tmp_path / "r")
    run_two_processes(_extract_rank, lambda port: (2, port, out), 120)
    alone = extract_features(_Recorder(), _images(23), batch_size=4, progress=False)
    seen = [np.load(f"{out}-{rank}-seen.npy").tolist() for rank in range(2)]
    # 6 batches: 3 each, whole batches; then the one batch of 3 images, on process 1
    assert seen == [list(range(12)), list(range(12, 23)) + [0, 1, 2]]
    few = extract_features(_Recorder(), _images(3), batch_size=4, progress=False)
    for rank in range(2):
        assert np.array_equal(np.load(f"{out}-{rank}-features.npy"), alone)
        assert np.array_equal(np.load(f"{out}-{rank}-few.npy"), few)


def _alone_and_split(tmp_path: Path, argv: list[str], extra_args) -> dict[str, dict]:
    """``ddpm ARGV --out OUT`` in one process and through torch.distributed.run in two; the JSON
    each wrote. ``extra_args(name)`` gives arguments per run (e.g. its own cache folder)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    results = {}
    for name, processes in (("one", 1), ("two", 2)):
        out = tmp_path / f"{name}.json"
        cmd = [*ddpm_launcher(processes), *argv, *extra_args(name), "--out", str(out)]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
        assert done.returncode == 0, done.stderr[-2000:]
        results[name] = json.loads(out.read_text())
    return results


@pytest.mark.slow
def test_torchrun_eval_shards_samples_and_reference_features(shapes_npz, tmp_path):
    """The reference features are computed by the two processes (each its share) and cached;
    the file and the scores equal those of one process."""
    run = tmp_path / "run"
    overrides = tiny_overrides(shapes_npz, "train.steps=4")  # not the default 3000 steps
    assert main(["train", "--out", str(run), "--no-progress", *overrides]) == 0
    argv = ["eval", str(run), "--num-samples", "24", "--sampler", "ddim", "--steps", "3"]
    argv += ["--batch", "5", "--features", "digits", "--no-progress"]
    reports = _alone_and_split(tmp_path, argv, lambda name: ["--cache-dir", str(tmp_path / name)])
    results = {name: report["results"][0] for name, report in reports.items()}
    for key in ("fid", "kid_mean", "precision", "recall", "n"):
        assert results["two"][key] == results["one"][key], key
    files = {name: sorted((tmp_path / name / "reference").glob("*.npz")) for name in results}
    assert len(files["one"]) == len(files["two"]) == 1
    assert files["one"][0].name == files["two"][0].name
    with np.load(files["one"][0]) as a, np.load(files["two"][0]) as b:
        assert np.array_equal(a["features"], b["features"])


@pytest.mark.slow
def test_torchrun_nll_shards_the_images_and_reports_the_bound_of_one_process(shapes_npz, tmp_path):
    run = tmp_path / "run"
    overrides = tiny_overrides(
        shapes_npz, "train.steps=2", "diffusion.schedule=cosine", "diffusion.num_steps=20"
    )
    assert main(["train", "--out", str(run), "--no-progress", *overrides]) == 0
    argv = ["nll", str(run), "--num-samples", "40", "--batch", "8", "--no-progress"]
    reports = _alone_and_split(tmp_path, argv, lambda name: [])
    assert reports["two"] == reports["one"] and reports["one"]["n"] == 40


def test_the_bound_of_an_image_does_not_depend_on_the_batch_it_is_in(shapes_npz, tmp_path):
    from ddpmkit.generate import load_run
    from ddpmkit.nll import evaluate_nll

    run = tmp_path / "run"
    overrides = tiny_overrides(
        shapes_npz, "train.steps=2", "diffusion.schedule=cosine", "diffusion.num_steps=20"
    )
    assert main(["train", "--out", str(run), "--no-progress", *overrides]) == 0
    loaded = load_run(run, device="cpu")
    a = evaluate_nll(loaded, n=12, batch_size=12, seed=3, progress=False)
    b = evaluate_nll(loaded, n=12, batch_size=5, seed=3, progress=False)
    c = evaluate_nll(loaded, n=12, batch_size=12, seed=4, progress=False)
    # the same noise: equal up to the float32 rounding of other batch shapes (~1e-9)
    assert abs(a.bits_per_dim - b.bits_per_dim) < 1e-7 * a.bits_per_dim
    assert abs(a.bits_per_dim - c.bits_per_dim) > 1e-4 * a.bits_per_dim  # other noise
