"""CIFAR-10 and CIFAR-100 as distributed (https://www.cs.toronto.edu/~kriz/cifar.html).

The source is the extracted folder of one of the four archives; the format is detected from
the file names:

=====================  ==========================================  ============================
folder                 train / test files                          labels, class names
=====================  ==========================================  ============================
cifar-10-batches-bin   data_batch_1..5.bin / test_batch.bin        1 label byte per record;
                                                                   batches.meta.txt
cifar-100-binary       train.bin / test.bin                        coarse + fine label bytes
                                                                   (fine used); fine_label_names.txt
cifar-10-batches-py    data_batch_1..5 / test_batch (pickles)      ``labels``; batches.meta
cifar-100-python       train / test (pickles)                      ``fine_labels``; meta
=====================  ==========================================  ============================

Binary records are 1 (or 2) label bytes followed by 3072 bytes: 1024 red, 1024 green, 1024 blue,
row-major 32×32. The pickles are read by :mod:`ddpmkit.data.safe_pickle`, which resolves numpy's
array reconstruction and nothing else. The split is ``train`` unless the source ends in
``:test`` (or ``data.split = "test"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddpmkit.data import safe_pickle
from ddpmkit.data.dataset import DataConfig, ImageDataset, checked_labels
from ddpmkit.data.imaging import convert_channels, resize_square_float, to_tensor_nchw
from ddpmkit.errors import DataError

PIXELS = 32 * 32 * 3
SPLITS = ("train", "test")
MAX_FILE_BYTES = 1 << 30
"""A CIFAR file larger than this (1 GiB; the largest real one, cifar-100's train, is 155 MB) is
refused unread."""


@dataclass(frozen=True)
class CifarFormat:
    name: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    classes: int
    label_bytes: int  # binary: label bytes per record (the last is used); 0: python pickles
    label_key: str  # python: key of the labels
    meta: str  # file of the class names
    names_key: str  # python: key of the class names in ``meta``


FORMATS = (
    CifarFormat(
        "CIFAR-10 binary",
        tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
        ("test_batch.bin",),
        10,
        1,
        "",
        "batches.meta.txt",
        "",
    ),
    CifarFormat(
        "CIFAR-100 binary", ("train.bin",), ("test.bin",), 100, 2, "", "fine_label_names.txt", ""
    ),
    CifarFormat(
        "CIFAR-10 python",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        10,
        0,
        "labels",
        "batches.meta",
        "label_names",
    ),
    CifarFormat(
        "CIFAR-100 python", ("train",), ("test",), 100, 0, "fine_labels", "meta", "fine_label_names"
    ),
)
FOLDER_NAMES = (
    "cifar-10-batches-bin",
    "cifar-100-binary",
    "cifar-10-batches-py",
    "cifar-100-python",
)


def detect(folder: Path) -> CifarFormat | None:
    """The CIFAR format of ``folder``'s files, or ``None`` when it holds none."""
    for fmt in FORMATS:
        files = [folder / name for name in (*fmt.train, *fmt.test)]
        if fmt.label_bytes == 0 and not (folder / fmt.meta).is_file():
            continue  # "train" / "test" pickles alone are too common names to mean CIFAR-100
        if any(f.is_file() for f in files):
            return fmt
    return None


def _size(path: Path, where: str) -> int:
    try:
        return path.stat().st_size
    except OSError as e:
        raise DataError(f"cannot read {where}: {e.strerror or e}") from None


def _read_bytes(path: Path, where: str) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise DataError(f"{where}: {size} bytes, larger than any CIFAR file; refused")
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {where}: {e.strerror or e}") from None


def _records(size: int, fmt: CifarFormat, where: str) -> int:
    record = fmt.label_bytes + PIXELS
    if not size or size % record:
        raise DataError(
            f"{where}: {size} bytes is not a whole number of {record}-byte {fmt.name} "
            "records (truncated or not a CIFAR file)"
        )
    return size // record


def _read_binary(path: Path, fmt: CifarFormat, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(n, 3, 32, 32)`` (a view of the file's bytes) and labels of one binary batch."""
    data = _read_bytes(path, where)
    n = _records(len(data), fmt, where)
    rows = np.frombuffer(data, dtype=np.uint8).reshape(n, -1)
    labels = rows[:, fmt.label_bytes - 1].astype(np.int64)
    return rows[:, fmt.label_bytes :].reshape(n, 3, 32, 32), labels


def _key(d: dict[Any, Any], key: str, where: str) -> Any:
    for k in (key, key.encode("latin-1")):
        if k in d:
            return d[k]
    raise DataError(f"{where}: no '{key}' entry (not a {key!r} CIFAR batch?)")


def _read_python(path: Path, fmt: CifarFormat, where: str) -> tuple[np.ndarray, np.ndarray]:
    batch = safe_pickle.loads(_read_bytes(path, where), where)
    if not isinstance(batch, dict):
        what = type(batch).__name__
        raise DataError(f"{where}: expected a dict of 'data' and labels, got {what}")
    data = _key(batch, "data", where)
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != PIXELS
    ):
        what = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{where}: 'data' must be a uint8 array (N, {PIXELS}), got {what}")
    labels = _key(batch, fmt.label_key, where)
    if not isinstance(labels, (list, tuple, np.ndarray)) or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in labels
    ):
        raise DataError(f"{where}: '{fmt.label_key}' must be a list of integers")
    labels = checked_labels(np.asarray(labels, dtype=np.int64), len(data), where).numpy()
    return data.reshape(-1, 3, 32, 32), labels


def _class_names(folder: Path, fmt: CifarFormat, source: str) -> list[str] | None:
    path = folder / fmt.meta
    where = f"'{source}' [{fmt.meta}]"
    if not path.is_file():
        return None
    if fmt.label_bytes:
        try:
            text = _read_bytes(path, where).decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{where}: not UTF-8 text") from None
        names = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        meta = safe_pickle.loads(_read_bytes(path, where), where)
        raw = _key(meta, fmt.names_key, where) if isinstance(meta, dict) else None
        if not isinstance(raw, (list, tuple)) or not all(isinstance(s, (str, bytes)) for s in raw):
            raise DataError(f"{where}: '{fmt.names_key}' must be a list of strings")
        names = [s.decode("latin-1") if isinstance(s, bytes) else s for s in raw]
    if len(names) != fmt.classes:
        raise DataError(f"{where}: {len(names)} class names, expected {fmt.classes}")
    return names


def load_cifar(
    folder: Path, fmt: CifarFormat, split: str, cfg: DataConfig, *, source: str, progress: bool
) -> ImageDataset:
    if split not in SPLITS:
        raise DataError(f"'{source}' is {fmt.name}: split must be 'train' or 'test', got {split!r}")
    files = fmt.train if split == "train" else fmt.test
    missing = [name for name in files if not (folder / name).is_file()]
    if missing:
        raise DataError(
            f"'{source}' looks like {fmt.name} but lacks {', '.join(missing)} of its {split} split"
        )
    wheres = [f"'{source}' [{name}]" for name in files]
    if fmt.label_bytes:  # sizes known up front: one output array, one file in memory at a time
        counts = [
            _records(_size(folder / f, w), fmt, w) for f, w in zip(files, wheres, strict=True)
        ]
        images = np.empty((sum(counts), 3, 32, 32), dtype=np.uint8)
        labels = np.empty(sum(counts), dtype=np.int64)
        at = 0
        for name, where, n in zip(files, wheres, counts, strict=True):
            part, part_labels = _read_binary(folder / name, fmt, where)
            if len(part) != n:
                raise DataError(f"{where}: changed while it was read")
            images[at : at + n], labels[at : at + n] = part, part_labels
            at += n
    else:
        parts = [_read_python(folder / f, fmt, w) for f, w in zip(files, wheres, strict=True)]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        del parts
    if labels.size and int(labels.max()) >= fmt.classes:
        raise DataError(
            f"'{source}': label {int(labels.max())} is out of range for {fmt.name} "
            f"({fmt.classes} classes)"
        )
    names = _class_names(folder, fmt, source)
    if cfg.channels == 3 and cfg.image_size == 32:
        tensor = torch.from_numpy(images)  # already (N, 3, 32, 32): no copy
    else:
        arr = convert_channels(images.transpose(0, 2, 3, 1), cfg.channels)
        arr = resize_square_float(arr, cfg.image_size, progress=progress, desc="resizing")
        tensor = to_tensor_nchw(arr)
    return ImageDataset(
        tensor,
        source=source,
        labels=checked_labels(labels, len(tensor), f"'{source}'"),
        class_names=names,
        kind=f"{fmt.name} {split}",
    )
