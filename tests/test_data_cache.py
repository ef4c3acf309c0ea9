"""The disk cache of decoded images, decoding part by part, and where training reads batches.

Oracles: the in-memory path (``data.cache=off``) and the raw arrays written by the tests; for
training, a run that holds the images on the device (the path every other test checks) must be
reproduced bit for bit when the batches are streamed from the cache.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_overrides
from ddpmkit.config import resolve_config
from ddpmkit.data import DataConfig, SkippedFilesWarning, load_dataset
from ddpmkit.data import npz as npz_module
from ddpmkit.data.cache import IMAGES_FILE, DataCache
from ddpmkit.data.imaging import resize_square_float
from ddpmkit.data.loader import (
    CPU_HOLD_SHARE,
    EpochPlan,
    Position,
    choose_hold,
    epoch_share,
)
from ddpmkit.errors import DataError
from ddpmkit.rundir import RunDir
from ddpmkit.train import Trainer


def _npz(path: Path, n: int = 40, size: int = 12, channels: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)
    labels = rng.integers(0, 5, n)
    np.savez(path, arr_0=images, labels=labels)
    return images, labels


def _cfg(source, **kw) -> DataConfig:
    kw.setdefault("image_size", 12)
    kw.setdefault("channels", 3)
    return DataConfig(source=str(source), **kw)


def test_cached_npz_equals_the_in_memory_one_and_is_memory_mapped(tmp_path, data_cache_dir):
    images, labels = _npz(tmp_path / "a.npz")
    cached = load_dataset(_cfg(tmp_path / "a.npz", cache="on"), progress=False)
    assert cached.cache_file is not None and cached.cache_file.parent.parent == data_cache_dir
    mapped = Path("/proc/self/maps")
    if mapped.exists():  # Linux: the file is mapped, not read into memory
        assert str(cached.cache_file) in mapped.read_text()
    assert np.array_equal(cached.images_uint8.permute(0, 2, 3, 1).numpy(), images)
    assert np.array_equal(cached.labels.numpy(), labels)
    memory = load_dataset(_cfg(tmp_path / "a.npz", cache="off"), progress=False)
    assert memory.cache_file is None
    assert torch.equal(memory.images_uint8, cached.images_uint8)
    assert cached.describe() == memory.describe()


def test_a_second_load_decodes_nothing(tmp_path, monkeypatch):
    _npz(tmp_path / "a.npz")
    first = load_dataset(_cfg(tmp_path / "a.npz", cache="on"), progress=False)

    def no_decoding(*args, **kwargs):
        raise AssertionError("the cached source was decoded again")

    monkeypatch.setattr(npz_module, "read_npy_rows", no_decoding)
    again = load_dataset(_cfg(tmp_path / "a.npz", cache="on"), progress=False)
    assert torch.equal(first.images_uint8, again.images_uint8)
    assert first.cache_file == again.cache_file


def test_a_changed_source_is_decoded_again_and_replaces_its_old_entry(tmp_path):
    _npz(tmp_path / "a.npz", seed=0)
    load_dataset(_cfg(tmp_path / "a.npz", cache="on"), progress=False)
    # same shape and size, other pixels: the archive's CRC-32s change, whatever the file time
    images, _ = _npz(tmp_path / "a.npz", seed=1)
    ds = load_dataset(_cfg(tmp_path / "a.npz", cache="on"), progress=False)
    assert np.array_equal(ds.images_uint8.permute(0, 2, 3, 1).numpy(), images)
    assert len(DataCache().entries()) == 1
    # other settings of the same source are another entry, kept alongside
    load_dataset(_cfg(tmp_path / "a.npz", cache="on", image_size=8), progress=False)
    assert len(DataCache().entries()) == 2


def test_npz_is_read_resized_and_labelled_part_by_part(tmp_path, monkeypatch):
    """Parts of 3 images (a tiny part size): the result equals resizing the whole array at once,
    and every label stays with its image."""
    images, labels = _npz(tmp_path / "a.npz", n=10, size=12, channels=3)
    monkeypatch.setattr(npz_module, "_ROWS_BYTES", 3 * 12 * 12 * 3)
    ds = load_dataset(_cfg(tmp_path / "a.npz", image_size=8, cache="on"), progress=False)
    whole = resize_square_float(images, 8, progress=False, desc="")
    assert np.array_equal(ds.images_uint8.permute(0, 2, 3, 1).numpy(), whole)
    assert np.array_equal(ds.labels.numpy(), labels)


def _folder(root: Path, bad: int = 1) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(3)
    pixels, labels = [], []
    for k, name in enumerate(["a", "b"]):
        (root / name).mkdir(parents=True)
        for i in range(4):
            arr = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / name / f"{i}.png")
            pixels.append(arr)
            labels.append(k)
    for i in range(bad):
        (root / "b" / f"9{i}.png").write_bytes(b"not a png")
    return np.stack(pixels), labels


def test_cached_folder_keeps_labels_and_warns_about_skipped_files_on_every_load(tmp_path):
    pixels, labels = _folder(tmp_path / "imgs")
    cfg = _cfg(tmp_path / "imgs", cache="on")
    for _ in range(2):  # the build, then the cache hit
        with pytest.warns(SkippedFilesWarning, match="skipped 1 unreadable"):
            ds = load_dataset(cfg, progress=False)
        assert ds.cache_file is not None
        assert np.array_equal(ds.images_uint8.permute(0, 2, 3, 1).numpy(), pixels)
        assert ds.labels.tolist() == labels and ds.class_names == ["a", "b"]


def test_a_folder_that_gains_a_file_is_decoded_again(tmp_path):
    _folder(tmp_path / "imgs", bad=0)
    cfg = _cfg(tmp_path / "imgs", cache="on")
    assert len(load_dataset(cfg, progress=False)) == 8
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(tmp_path / "imgs" / "a" / "z.png")
    assert len(load_dataset(cfg, progress=False)) == 9


def test_a_failed_build_leaves_nothing_behind(tmp_path, data_cache_dir):
    """Every file unreadable: the error comes while the entry is written; no entry, no
    temporary folder remains."""
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(3):
        (root / f"{i}.png").write_bytes(b"junk")
    with pytest.raises(DataError, match="none of the 3 image files"):
        load_dataset(_cfg(root, cache="on"), progress=False)
    assert list(data_cache_dir.iterdir()) == []


def test_a_damaged_entry_is_rebuilt_with_a_warning(tmp_path):
    images, _ = _npz(tmp_path / "a.npz")
    ds = load_dataset(_cfg(tmp_path / "a.npz", cache="on"), progress=False)
    path = ds.cache_file
    del ds
    with open(path, "r+b") as f:
        f.truncate(100)
    with pytest.warns(UserWarning, match="damaged"):
        again = load_dataset(_cfg(tmp_path / "a.npz", cache="on"), progress=False)
    assert np.array_equal(again.images_uint8.permute(0, 2, 3, 1).numpy(), images)
    assert os.path.getsize(path) == images.size


def test_an_unwritable_cache_is_one_clear_error(tmp_path, monkeypatch):
    _npz(tmp_path / "a.npz")
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("DDPMKIT_CACHE", str(tmp_path / "file" / "cache"))
    with pytest.raises(DataError, match=r"cannot write the data cache.*data\.cache=off"):
        load_dataset(_cfg(tmp_path / "a.npz", cache="on"), progress=False)


def test_auto_caches_large_sources_only(tmp_path, monkeypatch):
    import ddpmkit.data as data_module

    _npz(tmp_path / "a.npz", n=30)
    assert load_dataset(_cfg(tmp_path / "a.npz"), progress=False).cache_file is None
    monkeypatch.setattr(data_module, "CACHE_MIN_IMAGES", 30)
    assert load_dataset(_cfg(tmp_path / "a.npz"), progress=False).cache_file is not None


def test_the_cache_entry_records_its_source(tmp_path):
    _npz(tmp_path / "a.npz")
    ds = load_dataset(_cfg(tmp_path / "a.npz", cache="on"), progress=False)
    meta = json.loads((ds.cache_file.parent / "meta.json").read_text())
    assert meta["count"] == 40 and meta["shape"] == [3, 12, 12]
    assert meta["location"] == str((tmp_path / "a.npz").resolve())
    assert ds.cache_file.name == IMAGES_FILE


# ------------------------------------------------------------------------------- hf streaming


@pytest.mark.slow
def test_hf_streaming_into_the_cache_equals_the_loaded_data_set(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    rng = np.random.default_rng(5)
    blobs, labels = [], []
    for i in range(2100):  # more than one decoding part (2048) and one row batch (1024)
        buffer = __import__("io").BytesIO()
        Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(buffer, "PNG")
        blobs.append(buffer.getvalue() if i != 1500 else b"broken")
        labels.append(i % 3)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["x", "y", "z"])}
    )
    table = datasets.Dataset.from_dict(
        {"image": [{"bytes": b, "path": None} for b in blobs], "label": labels}, features=features
    )
    (tmp_path / "pq").mkdir()
    table.to_parquet(str(tmp_path / "pq" / "train.parquet"))
    source = f"hf:{tmp_path / 'pq'}"
    with pytest.warns(SkippedFilesWarning, match="row 1500"):
        loaded = load_dataset(_cfg(source, image_size=8, cache="off"), progress=False)
    with pytest.warns(SkippedFilesWarning, match="row 1500"):
        streamed = load_dataset(_cfg(source, image_size=8, streaming=True), progress=False)
    assert streamed.cache_file is not None  # a stream is always cached (auto)
    assert torch.equal(streamed.images_uint8, loaded.images_uint8)
    assert torch.equal(streamed.labels, loaded.labels) and len(streamed) == 2099
    expected = [k for i, k in enumerate(labels) if i != 1500]
    assert streamed.labels.tolist() == expected
    assert streamed.class_names == ["x", "y", "z"]


# ------------------------------------------------------------------------------- batches


def test_a_position_hands_out_each_image_once_per_epoch_across_epochs():
    position, plan = Position(), EpochPlan(seed=3, count=10)
    drawn = torch.cat([position.take(7, plan) for _ in range(4)])
    expected = torch.cat([epoch_share(3, e, 10, 0, 1) for e in range(3)])[:28]
    assert torch.equal(drawn, expected)
    assert position.epoch == 3 and position.cursor == 8


def test_choose_hold(monkeypatch):
    import ddpmkit.data.loader as loader

    monkeypatch.setattr(loader, "physical_memory", lambda: 1000 * 2**20)
    cpu = torch.device("cpu")
    limit = int(CPU_HOLD_SHARE * 1000 * 2**20)
    assert choose_hold("auto", limit, cpu)[0] == "device"
    hold, why = choose_hold("auto", limit + 1, cpu)
    assert hold == "stream" and "more than 25% of the machine's 1000.0 MiB" in why
    assert choose_hold("stream", 10, cpu)[0] == "stream"
    assert choose_hold("device", 10 * limit, cpu)[0] == "device"


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return RunDir(run).load_checkpoint().tensors["model"]


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.slow
def test_streamed_batches_train_exactly_like_images_held_on_the_device(
    shapes_npz, tmp_path, workers, one_thread
):
    """hold=stream from the cache (positioned reads, with and without a worker process) and a
    resume in the middle give the weights of the run that holds the images on the device."""
    common = ["train.steps=6", "data.random_flip=true", "train.checkpoint_every=3"]
    device = resolve_config(overrides=tiny_overrides(shapes_npz, *common, "data.hold=device"))
    Trainer(device, tmp_path / "device", progress=False).train()
    streamed = [
        *common,
        "data.hold=stream",
        "data.cache=on",
        f"data.loader_workers={workers}",
    ]
    first = resolve_config(overrides=tiny_overrides(shapes_npz, *streamed, "train.steps=3"))
    trainer = Trainer(first, tmp_path / "stream", progress=False)
    assert "streamed from the cache" in trainer.dataset_description
    trainer.train()
    rest = resolve_config(overrides=tiny_overrides(shapes_npz, *streamed))
    Trainer(rest, tmp_path / "stream", resume=True, progress=False).train()
    a, b = _weights(tmp_path / "device"), _weights(tmp_path / "stream")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_log_line_says_where_the_images_are(shapes_npz, tmp_path):
    config = resolve_config(overrides=tiny_overrides(shapes_npz, "train.steps=1"))
    trainer = Trainer(config, tmp_path / "run", progress=False)
    assert "held on cpu (0.0 MiB, at most 25% of the machine's" in trainer.dataset_description
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trainer.train()


def test_auto_leaves_digits_in_memory_and_writes_nothing(data_cache_dir):
    ds = load_dataset(DataConfig(), progress=False)
    assert ds.cache_file is None and len(ds) == 1797
    assert not data_cache_dir.exists()
    cached = load_dataset(DataConfig(cache="on"), progress=False)
    assert cached.cache_file is not None and torch.equal(cached.images_uint8, ds.images_uint8)
    assert torch.equal(cached.labels, ds.labels) and cached.class_names == ds.class_names


def test_the_cache_command_builds_lists_and_clears(tmp_path, capsys, data_cache_dir, monkeypatch):
    from ddpmkit.cli import main

    images, _ = _npz(tmp_path / "a.npz")
    _npz(tmp_path / "b.npz", seed=2)
    for name in ("a", "b"):
        argv = ["cache", "build", "--data", str(tmp_path / f"{name}.npz"), "--no-progress"]
        assert main([*argv, "data.image_size=12", "data.channels=3"]) == 0
    out = capsys.readouterr().out
    assert "40 images, 12x12 RGB" in out and str(data_cache_dir) in out
    assert main(["cache", "list"]) == 0
    listed = capsys.readouterr().out.strip().splitlines()
    assert len(listed) == 2 and all("40 x 3x12x12" in line for line in listed)
    # the built entry is the one training finds: nothing is decoded again
    ds = load_dataset(_cfg(tmp_path / "a.npz", cache="on"), progress=False)
    assert np.array_equal(ds.images_uint8.permute(0, 2, 3, 1).numpy(), images)
    monkeypatch.chdir(tmp_path)  # a relative path names the same source
    assert main(["cache", "clear", "a.npz"]) == 0
    assert "removed" in capsys.readouterr().out
    assert [e.meta["source"] for e in DataCache().entries()] == [str(tmp_path / "b.npz")]
    assert main(["cache", "clear"]) == 0 and DataCache().entries() == []
    assert main(["cache", "build", "--data", str(tmp_path / "missing.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ddpm cache: error: data source")


@pytest.mark.parametrize(
    "damage",
    [
        {"count": None},
        {"count": 10**12},
        {"shape": "abc"},
        {"shape": [3, 12]},
        {"source": 7},
        {"class_names": [1, 2]},
        {"labelled": "yes"},
        {"format": 99},
    ],
)
def test_a_tampered_meta_is_rebuilt_never_a_traceback(tmp_path, damage, capsys):
    from ddpmkit.cli import main

    images, labels = _npz(tmp_path / "a.npz")
    ds = load_dataset(_cfg(tmp_path / "a.npz", cache="on"), progress=False)
    meta_path = ds.cache_file.parent / "meta.json"
    del ds
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, **damage}))
    assert main(["cache", "list"]) == 0  # a bad entry is left out of the listing
    assert capsys.readouterr().out.startswith("the cache")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = load_dataset(_cfg(tmp_path / "a.npz", cache="on"), progress=False)
    assert np.array_equal(again.images_uint8.permute(0, 2, 3, 1).numpy(), images)
    assert np.array_equal(again.labels.numpy(), labels)
