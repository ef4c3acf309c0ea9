"""``hf:`` data sources: local data sets built here (save_to_disk, parquet, imagefolder) give
exactly the pixels and labels of the same images read as a folder; offline and missing-package
errors are one line. Nothing is downloaded (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE are set)."""

from __future__ import annotations

import io
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from conftest import TINY  # noqa: E402
from ddpmkit.data import DataConfig, SkippedFilesWarning, load_dataset  # noqa: E402
from ddpmkit.errors import ConfigError, DataError  # noqa: E402

CLASSES = ["cat", "dog", "eel"]


@pytest.fixture
def hf(tmp_path, monkeypatch):
    """The ``datasets`` module, offline, with its cache in ``tmp_path``."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    return datasets


def _images() -> list[Image.Image]:
    """Images of every mode and shape the folder reader handles specially."""
    rng = np.random.default_rng(0)
    out = [
        Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)),  # wide RGB
        Image.fromarray(rng.integers(0, 256, (40, 12), dtype=np.uint8)),  # tall L
        Image.fromarray(rng.integers(0, 256, (16, 16, 4), dtype=np.uint8)),  # RGBA
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)),  # exact size
        Image.fromarray(rng.integers(0, 65536, (10, 10), dtype=np.uint16)),  # 16-bit, upscaled
        Image.fromarray(rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)).convert("P"),
    ]
    out[5].info["transparency"] = 3
    return out


def _write_folder(root: Path) -> tuple[list[bytes], list[int]]:
    """Class subfolders ``cat/``, ``dog/``, ``eel/`` of PNGs; returns the file bytes and labels
    in the folder reader's (sorted) order."""
    blobs = []
    for i, img in enumerate(_images()):
        k = i % len(CLASSES)
        path = root / CLASSES[k] / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, **({"transparency": 3} if img.mode == "P" else {}))
        blobs.append((path.relative_to(root).as_posix(), path.read_bytes(), k))
    blobs.sort()
    return [b for _, b, _ in blobs], [k for _, _, k in blobs]


def _hf_dataset(hf, blobs, labels):
    features = hf.Features({"image": hf.Image(), "label": hf.ClassLabel(names=CLASSES)})
    rows = {"image": [{"bytes": b, "path": None} for b in blobs], "label": labels}
    return hf.Dataset.from_dict(rows, features=features)


def _load(source, **kw):
    return load_dataset(DataConfig(source=str(source), **kw), progress=False)


@pytest.mark.parametrize(("size", "channels"), [(16, 3), (16, 1), (24, 3)])
def test_hf_sources_match_the_folder_exactly(tmp_path, hf, size, channels):
    folder = tmp_path / "imgs"
    blobs, labels = _write_folder(folder)
    ds = _hf_dataset(hf, blobs, labels)
    ds.save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "pq").mkdir()
    ds.to_parquet(str(tmp_path / "pq" / "train.parquet"))
    hf.DatasetDict({"train": ds.select([0]), "test": ds}).save_to_disk(str(tmp_path / "dict"))

    ref = _load(folder, image_size=size, channels=channels)
    assert ref.class_names == CLASSES and ref.labels.tolist() == labels
    sources = [
        f"hf:{tmp_path / 'saved'}",
        f"hf:{tmp_path / 'pq'}",
        f"hf:{tmp_path / 'dict'}:test",
        f"hf:{folder}",  # the imagefolder builder: labels from the class folders
    ]
    for source in sources:
        got = _load(source, image_size=size, channels=channels)
        assert got.images_uint8.dtype == torch.uint8
        assert torch.equal(got.images_uint8, ref.images_uint8), source
        assert torch.equal(got.labels, ref.labels), source
        assert got.class_names == CLASSES, source
        assert "3 classes" in got.describe() and f"{len(blobs)} images" in got.describe()


def test_pil_images_encoded_by_datasets_match(tmp_path, hf):
    """Rows given as PIL images (datasets encodes them as PNG, losslessly)."""
    folder = tmp_path / "imgs"
    blobs, labels = _write_folder(folder)
    pil = [Image.open(io.BytesIO(b)) for b in blobs]
    for img in pil:
        img.load()
    features = hf.Features({"picture": hf.Image(), "y": hf.ClassLabel(names=CLASSES)})
    hf.Dataset.from_dict({"picture": pil, "y": labels}, features=features).save_to_disk(
        str(tmp_path / "saved")
    )
    ref = _load(folder, image_size=16, channels=3)
    got = _load(f"hf:{tmp_path / 'saved'}", image_size=16, channels=3)
    assert torch.equal(got.images_uint8, ref.images_uint8) and torch.equal(got.labels, ref.labels)


def test_columns_explicit_and_detected(tmp_path, hf):
    blobs, labels = _write_folder(tmp_path / "imgs")
    rows = {
        "a": [{"bytes": b, "path": None} for b in blobs],
        "b": [{"bytes": b, "path": None} for b in reversed(blobs)],
        "klass": labels,
        "note": ["x"] * len(blobs),
    }
    features = hf.Features(
        {"a": hf.Image(), "b": hf.Image(), "klass": hf.Value("int64"), "note": hf.Value("string")}
    )
    hf.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "two"))
    src = f"hf:{tmp_path / 'two'}"
    with pytest.raises(DataError, match="several image columns .*data.image_column"):
        _load(src)
    ds = _load(src, image_column="b", image_size=8)
    assert ds.labels is None  # an integer column is used only when named
    ds = _load(src, image_column="a", label_column="klass", image_size=8)
    assert ds.labels.tolist() == labels and ds.class_names is None
    assert "3 classes" in ds.describe()
    with pytest.raises(DataError, match="must be a ClassLabel or an integer column"):
        _load(src, image_column="a", label_column="note")
    with pytest.raises(DataError, match="no column 'nope'; columns: a .*klass"):
        _load(src, image_column="nope")
    with pytest.raises(DataError, match="column 'note' is not an Image feature"):
        _load(src, image_column="note")
    hf.Dataset.from_dict({"klass": labels}).save_to_disk(str(tmp_path / "none"))
    with pytest.raises(DataError, match="has no Image column"):
        _load(f"hf:{tmp_path / 'none'}")


def test_bad_labels_and_unreadable_images(tmp_path, hf):
    blobs, labels = _write_folder(tmp_path / "imgs")
    rows = [{"bytes": b, "path": None} for b in blobs]
    rows[1] = {"bytes": b"not a png", "path": None}
    ds = hf.Dataset.from_dict(
        {"image": rows, "label": labels},
        features=hf.Features({"image": hf.Image(), "label": hf.ClassLabel(names=CLASSES)}),
    )
    ds.save_to_disk(str(tmp_path / "one-bad"))
    with pytest.warns(SkippedFilesWarning, match="skipped 1 unreadable image of 6 .*row 1"):
        got = _load(f"hf:{tmp_path / 'one-bad'}", image_size=8)
    assert got.labels.tolist() == labels[:1] + labels[2:]  # the label left with its image
    negative = hf.Dataset.from_dict(
        {"image": [{"bytes": blobs[0], "path": None}], "label": [-1]},
        features=hf.Features({"image": hf.Image(), "label": hf.Value("int64")}),
    )
    negative.save_to_disk(str(tmp_path / "neg"))
    with pytest.raises(DataError, match="labels must be >= 0, found -1"):
        _load(f"hf:{tmp_path / 'neg'}", label_column="label")


def test_splits(tmp_path, hf):
    blobs, labels = _write_folder(tmp_path / "imgs")
    ds = _hf_dataset(hf, blobs, labels)
    hf.DatasetDict({"train": ds, "validation": ds.select([2, 3])}).save_to_disk(
        str(tmp_path / "dd")
    )
    src = f"hf:{tmp_path / 'dd'}"
    assert len(_load(src, image_size=8)) == 6  # train by default
    assert len(_load(src, split="validation", image_size=8)) == 2
    assert len(_load(f"{src}:validation", image_size=8)) == 2
    with pytest.raises(DataError, match="no split 'test' \\(splits: train, validation\\)"):
        _load(f"{src}:test")
    with pytest.raises(DataError, match="give one of them"):
        _load(f"{src}:validation", split="train")
    # split slicing of datasets, on a parquet folder
    (tmp_path / "pq").mkdir()
    ds.to_parquet(str(tmp_path / "pq" / "train.parquet"))
    assert len(_load(f"hf:{tmp_path / 'pq'}:train[:4]", image_size=8)) == 4


def test_offline_without_cache_says_what_to_run(hf):
    with pytest.raises(DataError) as e:
        _load("hf:some-user/not-cached-anywhere:test", hf_config="small")
    msg = str(e.value)
    assert "\n" not in msg and "not in the local cache" in msg
    assert (
        "python -c \"import datasets; datasets.load_dataset('some-user/not-cached-anywhere', "
        "'small', split='test')\"" in msg
    )
    assert "HF_DATASETS_OFFLINE=1" in msg


def test_missing_datasets_package_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(DataError, match=r"need the 'datasets' package: pip install 'ddpmkit\[hf\]"):
        _load("hf:fashion_mnist")


def test_config_values(tmp_path):
    with pytest.raises(ConfigError, match="names no data set"):
        DataConfig(source="hf:").validate()
    with pytest.raises(ConfigError, match="data.image_column"):
        DataConfig(source="hf:x", image_column="").validate()
    with pytest.raises(ConfigError, match="data.hf_config"):
        DataConfig(source="hf:x", hf_config=3).validate()
    with pytest.raises(DataError, match="ends in ':'"):
        _load("hf:x:")
    (tmp_path / "file.parquet").write_bytes(b"PAR1")
    pytest.importorskip("datasets")
    with pytest.raises(DataError, match="is a file"):
        _load(f"hf:{tmp_path / 'file.parquet'}")


def test_train_on_an_hf_source(tmp_path, hf):
    """``ddpm train --data hf:...`` trains on it (a few steps of the tiny model)."""
    from ddpmkit.train import Trainer, prepare_run

    blobs, labels = _write_folder(tmp_path / "imgs")
    _hf_dataset(hf, blobs * 3, labels * 3).save_to_disk(str(tmp_path / "saved"))
    overrides = [*TINY, "train.steps=2", "train.batch_size=4"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config, run = prepare_run(None, overrides, f"hf:{tmp_path / 'saved'}", tmp_path / "run")
        trainer = Trainer(config, run, progress=False)
        result = trainer.train()
    # what `ddpm train` prints as its "data:" line
    assert "18 images, 8x8 grayscale, 3 classes" in trainer.dataset_description
    assert result.step == 2
