"""MNIST-family idx files: the authors' folders, torchvision's raw folders, Debian's
Fashion-MNIST (built-in name), splits, EMNIST, and hostile files refused in one line."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from ddpmkit.cli import main
from ddpmkit.data import DataConfig, load_dataset
from ddpmkit.data import idx as idx_module
from ddpmkit.errors import DataError
from idx_files import garments, idx_bytes, write_idx, write_split

FASHION = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


def load(source, **kw):
    kw.setdefault("image_size", 12)
    return load_dataset(DataConfig(source=str(source), cache="off", **kw), progress=False)


@pytest.fixture
def authors(tmp_path):
    """A folder laid out as the authors ship MNIST/Fashion-MNIST: gzipped train and t10k."""
    train, test = garments(30, 0), garments(7, 1)
    folder = tmp_path / "mnist"
    write_split(folder, "train", *train, gz=True)
    write_split(folder, "t10k", *test, gz=True)
    return folder, train, test


def pixels(dataset) -> np.ndarray:
    return dataset.images_uint8[:, 0].numpy()


@pytest.mark.parametrize("gz", [True, False])
def test_a_folder_of_idx_files_gives_its_images_and_labels(tmp_path, gz):
    images, labels = garments(30, 0)
    write_split(tmp_path / "d", "train", images, labels, gz=gz)
    data = load(tmp_path / "d")
    assert np.array_equal(pixels(data), images)  # 12×12 at image_size 12: not resampled
    assert data.labels.tolist() == labels.tolist() and data.class_names is None
    assert data.images_uint8.dtype == torch.uint8 and data.images_uint8.shape == (30, 1, 12, 12)


def test_t10k_is_the_test_split_chosen_by_suffix_or_config(authors):
    folder, train, test = authors
    assert np.array_equal(pixels(load(folder)), train[0])
    assert np.array_equal(pixels(load(f"{folder}:test")), test[0])
    assert np.array_equal(pixels(load(folder, split="test")), test[0])
    assert load(f"{folder}:test").labels.tolist() == test[1].tolist()
    with pytest.raises(DataError, match="names split 'test' but data.split is 'train'"):
        load(f"{folder}:test", split="train")


def test_an_images_file_as_the_source_finds_its_labels(authors):
    folder, _, test = authors
    data = load(folder / "t10k-images-idx3-ubyte.gz")
    assert np.array_equal(pixels(data), test[0]) and data.labels.tolist() == test[1].tolist()
    with pytest.raises(DataError, match="the test split's file but data.split is 'train'"):
        load(folder / "t10k-images-idx3-ubyte.gz", split="train")


def test_torchvision_raw_folders_are_found_and_fashion_mnist_named(tmp_path):
    images, labels = garments(20, 3)
    write_split(tmp_path / "root" / "FashionMNIST" / "raw", "train", images, labels, gz=False)
    for source in (tmp_path / "root", tmp_path / "root" / "FashionMNIST"):
        data = load(source)
        assert np.array_equal(pixels(data), images) and data.class_names == FASHION


def test_images_are_resized_and_given_channels_like_other_sources(tmp_path):
    coarse, labels = garments(4, 5, size=7)
    images = np.kron(coarse, np.ones((1, 4, 4), np.uint8))  # 28×28 made of 4×4 blocks
    write_split(tmp_path / "d", "train", images, labels, gz=True)
    data = load(tmp_path / "d", image_size=14, channels=3)
    assert data.images_uint8.shape == (4, 3, 14, 14)
    gray = data.images_uint8.float()
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])
    # a 2×2 block mean is what an antialiased halving keeps (Lanczos: within a few levels)
    blocks = images.reshape(4, 14, 2, 14, 2).mean(axis=(2, 4))
    assert np.corrcoef(blocks.ravel(), gray[:, 0].numpy().ravel())[0, 1] > 0.98


def test_emnist_subsets_are_chosen_by_file_and_turned_upright(tmp_path):
    folder = tmp_path / "gzip"
    upright, labels = garments(6, 7)
    stored = upright.transpose(0, 2, 1)  # EMNIST stores each image transposed
    write_split(folder, "emnist-letters-train", stored, labels, gz=True)
    write_split(folder, "emnist-digits-train", stored[:3], labels[:3], gz=True)
    with pytest.raises(DataError, match="several idx data sets .*emnist-digits.*emnist-letters"):
        load(folder)
    data = load(folder / "emnist-letters-train-images-idx3-ubyte.gz")
    assert np.array_equal(pixels(data), upright)


def test_the_built_in_name_reads_the_debian_folder(tmp_path, monkeypatch):
    images, labels = garments(12, 9)
    write_split(tmp_path, "train", images, labels, gz=True)
    write_split(tmp_path, "t10k", images[:5], labels[:5], gz=True)
    monkeypatch.setattr(idx_module, "FASHION_MNIST_DIR", tmp_path)
    data = load("fashion-mnist")
    assert np.array_equal(pixels(data), images) and data.class_names == FASHION
    assert "Fashion-MNIST train" in data.describe()
    assert len(load("fashion-mnist:test")) == 5 and len(load("fashion-mnist", split="test")) == 5


def test_the_built_in_name_without_the_package_says_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(idx_module, "FASHION_MNIST_DIR", tmp_path / "absent")
    assert main(["train", "--data", "fashion-mnist", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "apt-get install -y dataset-fashion-mnist" in err
    assert not (tmp_path / "run").exists()


def _header(ndim: int, dims, type_code: int = 0x08) -> bytes:
    return struct.pack(">BBBB", 0, 0, type_code, ndim) + struct.pack(f">{len(dims)}I", *dims)


HOSTILE_IMAGES = {
    "wrong magic": b"\x00\x01\x08\x03" + idx_bytes(np.zeros((2, 4, 4), np.uint8))[4:],
    "not an idx file": b"PK\x03\x04 zip, not idx",
    "values of type 0x0d": _header(3, (1, 4, 4), 0x0D) + bytes(64),
    "2 dimensions where 3": _header(2, (4, 4)) + bytes(16),
    "truncated in its header": _header(3, (2, 4, 4))[:9],
    "truncated: 20 of the 32": _header(3, (2, 4, 4)) + bytes(20),
    "longer than the 32 bytes": _header(3, (2, 4, 4)) + bytes(33),
    "more than the 4 GiB": _header(3, (4_000_000_000, 4096, 4096)) + bytes(16),
    "not square": _header(3, (2, 4, 5)) + bytes(40),
}


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("what", sorted(HOSTILE_IMAGES))
def test_hostile_images_files_are_refused_in_one_line(tmp_path, what, gz):
    data = HOSTILE_IMAGES[what]
    path = tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DataError) as info:
        load(tmp_path)
    assert what in str(info.value) and "\n" not in str(info.value)


def test_a_corrupt_gzip_stream_is_refused_in_one_line(tmp_path):
    good = gzip.compress(idx_bytes(np.zeros((50, 8, 8), np.uint8)))
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(good[:40] + b"\xff" * 20 + good[60:])
    with pytest.raises(DataError) as info:  # unreadable, truncated or too long: where it hits
        load(tmp_path)
    assert "\n" not in str(info.value)


def test_labels_must_match_the_images_in_count_and_range(tmp_path, monkeypatch, capsys):
    images, labels = garments(8, 2)
    write_idx(tmp_path / "train-images-idx3-ubyte", images, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels[:7], gz=False)
    with pytest.raises(DataError, match="7 labels for 8 images"):
        load(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.full(8, 10, np.uint8), gz=False)
    assert load(tmp_path).labels.tolist() == [10] * 8  # 11 classes: unnamed data may have them
    monkeypatch.setattr(idx_module, "FASHION_MNIST_DIR", tmp_path)
    with pytest.raises(DataError, match="label 10 is out of range for 10 classes"):
        load("fashion-mnist")
    # the command line: one line, exit 2, no run directory
    assert main(["train", "--data", "fashion-mnist", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "out of range" in err and not (tmp_path / "run").exists()


def test_a_folder_without_the_asked_split_says_so(tmp_path):
    write_split(tmp_path, "train", *garments(3, 0), gz=True)
    with pytest.raises(DataError, match="none of its test split"):
        load(f"{tmp_path}:test")
    with pytest.raises(DataError, match="split must be 'train' or 'test'"):
        load(tmp_path, split="validation")


def test_unlabelled_idx_images_load_without_labels(tmp_path):
    images, _ = garments(5, 4)
    write_idx(tmp_path / "train-images-idx3-ubyte", images, gz=True)
    data = load(tmp_path)
    assert data.labels is None and np.array_equal(pixels(data), images)


def test_nll_on_another_split_reads_the_data_as_written(authors, tmp_path):
    """A run trained on an idx folder's train split (data.split=train) bounds ``FOLDER:test``
    (the 7 t10k images), not a split conflict between the run's split and the one written."""
    from conftest import TINY, train_run
    from ddpmkit.evaluation.nll import run_nll

    folder, _, test = authors
    overrides = [f"data.source={folder}", "data.split=train", *TINY, "train.steps=2"]
    train_run(tmp_path / "run", overrides)
    report, _ = run_nll(
        tmp_path / "run", data=f"{folder}:test", n=100, out=tmp_path / "nll.json", progress=False
    )
    assert (report.n, report.source) == (len(test[0]), f"{folder}:test")  # all 7, not 100 of 30
    assert np.isfinite(report.bits_per_dim)
