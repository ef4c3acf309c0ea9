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
import torch.distributed as dist

from ddpmkit.cache_home import cache_home
from ddpmkit.fileio import atomic_write_bytes
from ddpmkit.metrics.extractors import FeatureExtractor, extract_features
from ddpmkit.sharding import process_group


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


def _cached(path: Path, count: int, dims: int) -> np.ndarray | None:
    if path.is_file():
        try:
            with np.load(path) as stored:
                features = stored["features"]
            if features.shape[0] == count and features.shape[1] == dims:
                return features.astype(np.float64)
        except (OSError, ValueError, KeyError):
            pass  # unreadable cache entry: recompute and overwrite it
    return None


def reference_features(
    images: torch.Tensor,
    extractor: FeatureExtractor,
    cache_dir: Path | None = None,
    batch_size: int = 500,
    progress: bool = True,
    distributed: bool = False,
) -> tuple[np.ndarray, bool]:
    """Features of ``images`` (uint8 NCHW), from the cache when present. Returns the (N, D)
    float64 features and whether they came from the cache. ``cache_dir=None`` uses
    :func:`default_cache_dir`; a cache that cannot be written is skipped with no error.

    ``distributed``: every process of the process group calls this; process 0 looks in the
    cache and tells the others, and when the features must be computed every process embeds
    its share of the images (:func:`extract_features`); process 0 writes the cache and gets the
    features, the others an empty ``(0, D)`` array."""
    path = cache_path(images, extractor, cache_dir or default_cache_dir())
    sharded = distributed and process_group() is not None
    main = not sharded or dist.get_rank() == 0
    features = _cached(path, len(images), extractor.dims) if main else None
    if sharded:
        found = [features is not None]
        dist.broadcast_object_list(found, src=0)
        if found[0]:
            return (features if main else np.zeros((0, extractor.dims))), True
    elif features is not None:
        return features, True
    features = extract_features(
        extractor,
        images,
        batch_size=batch_size,
        progress=progress,
        desc="reference features",
        distributed=sharded,
    )
    if not main:
        return np.zeros((0, extractor.dims)), False
    buffer = io.BytesIO()
    np.savez(buffer, features=features.astype(np.float32))
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except OSError:
        pass  # a read-only home directory must not stop an evaluation
    return features.astype(np.float32).astype(np.float64), False
