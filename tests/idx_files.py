"""Small idx files written independently of ddpmkit (struct + gzip), for the idx tests."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """The idx encoding of ``array``: 0, 0, type, ndim, big-endian uint32 dims, the values."""
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array).astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, *, gz: bool) -> Path:
    data = idx_bytes(array)
    path = path.with_name(path.name + ".gz") if gz else path
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_split(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool):
    """``prefix``-images-idx3-ubyte and ``prefix``-labels-idx1-ubyte (gzipped if ``gz``)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / f"{prefix}-images-idx3-ubyte", images, gz=gz)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, gz=gz)


def garments(n: int, seed: int, size: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random uint8 images (n, size, size) and labels in 0..9."""
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 256, (n, size, size), dtype=np.uint8),
        rng.integers(0, 10, n, dtype=np.uint8),
    )
