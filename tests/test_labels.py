"""Class labels carried by every source that has them: digits, class subfolders, npz
``labels`` / ``arr_1`` / ``class_names``, CIFAR and hf: ClassLabel (those two in their own test
files), validated into ``ImageDataset.labels`` (int64) and ``class_names``."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpmkit.data import DataConfig, ImageDataset, SkippedFilesWarning, load_dataset
from ddpmkit.errors import DataError


def _load(source, **kw) -> ImageDataset:
    kw.setdefault("image_size", 8)
    return load_dataset(DataConfig(source=str(source), **kw), progress=False)


def _png(path: Path, level: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), level).save(path)


def test_digits_labels_and_names():
    ds = _load("digits")
    assert ds.labels.dtype == torch.int64 and ds.class_names == [str(k) for k in range(10)]
    assert ds.num_classes == 10 and "10 classes" in ds.describe()


def test_class_subfolders_sorted(tmp_path):
    root = tmp_path / "pets"
    for name, level in [("dog", 1), ("cat", 2), ("Zebra", 3)]:
        for i in range(2):
            _png(root / name / f"{i}.png", level)
    ds = _load(root)
    assert ds.class_names == ["Zebra", "cat", "dog"]  # sorted names (code points) → 0..K-1
    assert ds.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert (ds.images_uint8[:, 0, 0, 0] == torch.tensor([3, 3, 2, 2, 1, 1])).all()
    assert "3 classes" in ds.describe()


@pytest.mark.parametrize(
    "layout",
    [
        ["a/1.png", "b/2.png", "top.png"],  # an image outside any class folder
        ["a/1.png", "b/x/2.png"],  # an image two levels down
        ["only/1.png", "only/2.png"],  # one folder is not a set of classes
        ["1.png", "2.png"],  # flat
    ],
)
def test_folders_that_are_not_classes_have_no_labels(tmp_path, layout):
    for rel in layout:
        _png(tmp_path / "d" / rel, 5)
    ds = _load(tmp_path / "d")
    assert ds.labels is None and ds.class_names is None and "class" not in ds.describe()


def test_class_subfolders_skip_unreadable_with_their_labels(tmp_path):
    root = tmp_path / "c"
    _png(root / "a" / "1.png", 1)
    (root / "a" / "2.png").write_bytes(b"broken")
    _png(root / "b" / "3.png", 3)
    with pytest.warns(SkippedFilesWarning):
        ds = _load(root)
    assert ds.labels.tolist() == [0, 1] and ds.class_names == ["a", "b"]


def test_npz_labels_arr1_and_class_names(tmp_path):
    images = np.zeros((4, 8, 8), np.uint8)
    np.savez(tmp_path / "a.npz", images, np.array([3, 1, 0, 2], np.int32))  # arr_0, arr_1
    ds = _load(tmp_path / "a.npz")
    assert ds.labels.dtype == torch.int64 and ds.labels.tolist() == [3, 1, 0, 2]
    assert ds.class_names is None and "4 classes" in ds.describe()
    names = np.array(["a", "b", "c", "d", "e"])
    np.savez(tmp_path / "b.npz", images=images, labels=np.arange(4, dtype=np.uint8) % 2,
             class_names=names)  # fmt: skip
    ds = _load(tmp_path / "b.npz")
    assert ds.labels.tolist() == [0, 1, 0, 1] and ds.class_names == list(names)
    assert "5 classes" in ds.describe()
    np.savez(tmp_path / "c.npz", images)
    assert _load(tmp_path / "c.npz").labels is None


@pytest.mark.parametrize(
    ("arrays", "needle"),
    [
        ({"labels": np.zeros(3, np.int64)}, r"\[labels\]: 3 labels for 4 images"),
        ({"arr_1": np.zeros(5, np.int64)}, r"\[arr_1\]: 5 labels for 4 images"),
        ({"labels": np.zeros(4, np.float32)}, "labels must be integers, got dtype float32"),
        ({"labels": np.zeros((4, 1), np.int64)}, "labels must be one-dimensional"),
        ({"labels": np.array([0, 1, -2, 0])}, "labels must be >= 0, found -2"),
        ({"labels": np.array([0, 1, 2**40, 0])}, "out of range"),
        ({"labels": np.array([0, 1, None, 0], dtype=object)}, "never unpickled"),
        ({"labels": np.arange(4), "class_names": np.array(["a", "b"])}, "only 2 class names"),
        ({"labels": np.arange(4), "class_names": np.arange(4)}, "unicode strings"),
        ({"class_names": np.array(["a"])}, "'class_names' without a 'labels' array"),
    ],
)
def test_npz_bad_labels(tmp_path, arrays, needle):
    np.savez(tmp_path / "x.npz", arr_0=np.zeros((4, 8, 8), np.uint8), **arrays)
    with pytest.raises(DataError, match=needle) as e:
        _load(tmp_path / "x.npz")
    assert "\n" not in str(e.value)


def test_cifar_labels(tmp_path):
    from test_data_cifar import CIFAR10_NAMES, write_cifar

    _, labels = write_cifar(tmp_path / "cifar-10-batches-bin", "cifar-10-batches-bin")
    ds = _load(tmp_path / "cifar-10-batches-bin")
    assert ds.labels.tolist() == labels.tolist() and ds.class_names == CIFAR10_NAMES


def test_hf_classlabel(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    images = [Image.new("RGB", (8, 8), (k, 0, 0)) for k in range(4)]
    features = datasets.Features(
        {"img": datasets.Image(), "fine": datasets.ClassLabel(names=["x", "y", "z"])}
    )
    saved = tmp_path / "saved"
    datasets.Dataset.from_dict(
        {"img": images, "fine": [2, 0, 1, 2]}, features=features
    ).save_to_disk(str(saved))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = _load(f"hf:{saved}", channels=3)
    assert ds.labels.tolist() == [2, 0, 1, 2] and ds.class_names == ["x", "y", "z"]


def test_image_dataset_validates_labels():
    images = torch.zeros(3, 1, 4, 4, dtype=torch.uint8)
    ds = ImageDataset(images, source="t", labels=np.array([0, 2, 1]), class_names=("a", "b", "c"))
    assert ds.labels.dtype == torch.int64 and ds.class_names == ["a", "b", "c"]
    with pytest.raises(DataError, match="labels must have shape \\(3,\\)"):
        ImageDataset(images, source="t", labels=torch.zeros(2, dtype=torch.int64))
    with pytest.raises(DataError, match="must be integers"):
        ImageDataset(images, source="t", labels=torch.zeros(3))
    with pytest.raises(DataError, match="label 2 but only 2 class names"):
        ImageDataset(images, source="t", labels=torch.tensor([0, 1, 2]), class_names=["a", "b"])
    with pytest.raises(DataError, match="class names given without labels"):
        ImageDataset(images, source="t", class_names=["a"])
    with pytest.raises(DataError, match="class names must be strings"):
        ImageDataset(images, source="t", labels=torch.tensor([0, 0, 0]), class_names=[1])
    assert ImageDataset(images, source="t").num_classes is None
