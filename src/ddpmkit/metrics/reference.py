"""Reference features of a data set, cached on disk.

Embedding the reference images is the slow half of an evaluation that does not change between
evaluations, so the features are kept in ``$DDPMKIT_CACHE`` (default ``~/.cache/ddpmkit``) under a
name made of the extractor's name and fingerprint and a hash of the image bytes: different data or
a different extractor (new weights, new preprocessing) is a different file, never a stale one.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import torch

from ddpmkit.cache_home import cache_home
from ddpmkit.fileio import atomic_write_bytes
from ddpmkit.metrics.extractors import FeatureExtractor, extract_features


def default_cache_dir() -> Path:
    """:func:`ddpmkit.cache_home.cache_home`: ``$DDPMKIT_CACHE``, else ``~/.cache/ddpmkit``."""
    return cache_home()


def images_fingerprint(images: torch.Tensor, rows: int = 4096) -> str:
    """16 hex digits of the SHA-256 of a uint8 image tensor's shape and bytes (hashed
    ``rows`` images at a time, so a memory-mapped data set is never copied whole)."""
    digest = hashlib.sha256(str(tuple(images.shape)).encode())
    for start in range(0, len(images), rows):
        digest.update(images[start : start + rows].contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def cache_path(images: torch.Tensor, extractor: FeatureExtractor, cache_dir: Path) -> Path:
    name = f"{extractor.name}-{extractor.fingerprint}-{images_fingerprint(images)}.npz"
    return cache_dir / "reference" / name


def reference_features(
    images: torch.Tensor,
    extractor: FeatureExtractor,
    cache_dir: Path | None = None,
    batch_size: int = 500,
    progress: bool = True,
) -> tuple[np.ndarray, bool]:
    """Features of ``images`` (uint8 NCHW), from the cache when present. Returns the (N, D)
    float64 features and whether they came from the cache. ``cache_dir=None`` uses
    :func:`default_cache_dir`; a cache that cannot be written is skipped with no error."""
    path = cache_path(images, extractor, cache_dir or default_cache_dir())
    if path.is_file():
        try:
            with np.load(path) as stored:
                features = stored["features"]
            if features.shape[0] == len(images) and features.shape[1] == extractor.dims:
                return features.astype(np.float64), True
        except (OSError, ValueError, KeyError):
            pass  # unreadable cache entry: recompute and overwrite it
    features = extract_features(
        extractor, images, batch_size=batch_size, progress=progress, desc="reference features"
    )
    buffer = io.BytesIO()
    np.savez(buffer, features=features.astype(np.float32))
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except OSError:
        pass  # a read-only home directory must not stop an evaluation
    return features.astype(np.float32).astype(np.float64), False
