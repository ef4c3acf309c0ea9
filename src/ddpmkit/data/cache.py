"""The disk cache of decoded images: each source is decoded once, then memory-mapped.

An entry is a folder ``ROOT/<setting key>-<content key>/`` holding ``images.u8`` (the uint8
``(N, C, H, W)`` images, raw, C order), ``labels.npy`` (int64, when labelled) and ``meta.json``
(count, shape, class names, the source's fingerprint). The setting key hashes the source's
location and the decoding settings (size, channels, split, columns, :data:`DECODE_VERSION`); the
content key hashes the source's fingerprint (file sizes, times and inodes; an archive's CRC-32s;
a ``datasets`` fingerprint). A changed source gets a new content key: its entry is built anew and
the old one of the same settings is removed.

An entry is written part by part under a temporary name and renamed when complete, so a crash
never leaves a half entry, and a source larger than memory is never held whole. ``ROOT`` is
the ``data`` folder of :func:`ddpmkit.cache_home.cache_home`: ``$DDPMKIT_CACHE/data``, else
``~/.cache/ddpmkit/data``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddpmkit.cache_home import ENV_VAR, cache_home
from ddpmkit.data.dataset import ImageDataset, SkippedFilesWarning
from ddpmkit.data.decoded import DecodedSource, gathered_labels
from ddpmkit.errors import DataError

CACHE_FORMAT = 1
DECODE_VERSION = 1
"""Bumped whenever decoding or resampling changes the pixels of a source: old entries are then
no longer found."""

IMAGES_FILE = "images.u8"
LABELS_FILE = "labels.npy"
META_FILE = "meta.json"
_TMP = ".tmp-"


def cache_root() -> Path:
    """``$DDPMKIT_CACHE/data``, else ``~/.cache/ddpmkit/data``."""
    return cache_home() / "data"


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str, ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:16]


@dataclass(frozen=True)
class CacheEntry:
    """One complete entry: its folder and what ``meta.json`` says of it."""

    path: Path
    meta: dict[str, Any]

    @property
    def images_file(self) -> Path:
        return self.path / IMAGES_FILE

    @property
    def count(self) -> int:
        return int(self.meta["count"])

    @property
    def nbytes(self) -> int:
        return self.count * int(np.prod(self.meta["shape"]))


class DataCache:
    """The entries below one root folder (:func:`cache_root` by default)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else cache_root()

    # ------------------------------------------------------------------ keys
    @staticmethod
    def setting_key(decoded: DecodedSource) -> str:
        return _digest(
            {
                "format": CACHE_FORMAT,
                "decode": DECODE_VERSION,
                "location": decoded.location,
                "settings": decoded.settings,
            }
        )

    def entry_path(self, decoded: DecodedSource) -> Path:
        return self.root / f"{self.setting_key(decoded)}-{_digest(decoded.fingerprint)}"

    # ------------------------------------------------------------------ reading
    def describe(self, entry) -> str:
        """One line of ``ddpm cache list``: size, images × shape, source, folder."""
        c, h, w = entry.meta["shape"]
        return (
            f"{entry.nbytes / 2**20:10.1f} MiB  {entry.count:>9} x {c}x{h}x{w}  "
            f"{entry.meta['source']}  ({entry.path.name})"
        )

    def entries(self) -> list[CacheEntry]:
        """Every complete, intact entry (well-formed meta, images of the size it says), oldest
        first."""
        found = []
        if not self.root.is_dir():
            return found
        for path in sorted(self.root.iterdir()):
            if _TMP in path.name or not path.is_dir():
                continue
            meta = _read_meta(path)
            if meta is None:
                continue
            entry = CacheEntry(path, meta)
            with contextlib.suppress(OSError):
                if entry.images_file.stat().st_size == entry.nbytes:
                    found.append(entry)
        return sorted(found, key=lambda e: e.meta.get("created", 0))

    def open(self, decoded: DecodedSource) -> ImageDataset | None:
        """The cached images of ``decoded``, memory-mapped, or ``None`` when there are none (or
        the entry is damaged: it is then removed)."""
        path = self.entry_path(decoded)
        if not path.is_dir():
            return None
        meta = _read_meta(path)
        try:
            if meta is None:
                raise ValueError("meta.json is missing or unreadable")
            return _mapped(CacheEntry(path, meta))
        except (ValueError, TypeError, KeyError, OSError, DataError) as e:
            warnings.warn(f"the cache entry {path} is damaged ({e}); decoding again", stacklevel=3)
            shutil.rmtree(path, ignore_errors=True)
            return None

    def load(self, decoded: DecodedSource) -> ImageDataset:
        """The images of ``decoded`` from the cache, decoded into it first when missing."""
        dataset = self.open(decoded)
        if dataset is not None:
            skipped = dataset.cache_meta.get("skipped")
            if skipped:
                warnings.warn(f"{skipped} (when it was cached)", SkippedFilesWarning, stacklevel=3)
            return dataset
        return self.build(decoded)

    # ------------------------------------------------------------------ writing
    def build(self, decoded: DecodedSource) -> ImageDataset:
        """Decode ``decoded`` part by part into a new entry and return it memory-mapped."""
        final = self.entry_path(decoded)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._remove_abandoned()
            tmp = self.root / f"{final.name}{_TMP}{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        except OSError as e:
            raise _cache_error(self.root, e) from None
        try:
            meta = _write_entry(tmp, decoded)
            try:
                os.replace(tmp, final)
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # another process finished it first
                meta = _read_meta(final) or meta
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, OSError):
                raise _cache_error(self.root, e) from None
            raise
        self._remove_replaced(final)
        return _mapped(CacheEntry(final, meta))

    def _remove_replaced(self, kept: Path) -> None:
        """Older entries of the same source and settings: their source has changed since."""
        prefix = kept.name.split("-")[0] + "-"
        for path in self.root.glob(prefix + "*"):
            if path != kept and _TMP not in path.name:
                shutil.rmtree(path, ignore_errors=True)

    def _remove_abandoned(self) -> None:
        """Temporary folders left by processes that died while writing."""
        for path in self.root.glob(f"*{_TMP}*"):
            pid = path.name.rsplit(_TMP, 1)[-1]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True)

    def remove(self, entry: CacheEntry) -> None:
        shutil.rmtree(entry.path)

    @staticmethod
    def matches(entry: CacheEntry, sources: list[str]) -> bool:
        """Whether ``entry`` was decoded from one of ``sources`` (as given to ``--data``: the
        same string, or a path that resolves to the entry's location)."""
        meta = entry.meta
        for source in sources:
            if source in (meta.get("source"), meta.get("location")):
                return True
            head = source.split(":")[0] if not Path(source).exists() else source
            with contextlib.suppress(OSError):
                if str(Path(head).expanduser().resolve()) == meta.get("location"):
                    return True
            if source.startswith("hf:") and meta.get("location") == source.rsplit(":", 1)[0]:
                return True
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cache_error(root: Path, e: OSError) -> DataError:
    if e.errno == errno.ENOSPC:
        what = "no space left on the device"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        what = "not writable"
    else:
        what = e.strerror or str(e)
    return DataError(
        f"cannot write the data cache in '{root}' ({what}): free space, point ${ENV_VAR} at "
        "another folder, or set data.cache=off"
    )


def _write_entry(folder: Path, decoded: DecodedSource) -> dict[str, Any]:
    """Write the images part by part, then the labels and ``meta.json``; returns the meta."""
    count, labels = 0, []
    with open(folder / IMAGES_FILE, "wb") as out:
        for images, part_labels in decoded.parts:
            out.write(np.ascontiguousarray(images, dtype=np.uint8).data)
            count += len(images)
            if part_labels is not None:
                labels.append(np.asarray(part_labels))
    skipped = decoded.finish()
    checked = gathered_labels(decoded, labels, count)
    if checked is not None:
        np.save(folder / LABELS_FILE, checked.numpy())
    meta = {
        "format": CACHE_FORMAT,
        "decode": DECODE_VERSION,
        "source": decoded.source,
        "location": decoded.location,
        "kind": decoded.kind,
        "settings": decoded.settings,
        "fingerprint": decoded.fingerprint,
        "count": count,
        "shape": [decoded.channels, decoded.image_size, decoded.image_size],
        "labelled": checked is not None,
        "class_names": decoded.class_names,
        "skipped": skipped,
        "created": time.time(),
    }
    (folder / META_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return meta


def _read_meta(folder: Path) -> dict[str, Any] | None:
    """``meta.json`` of an entry when it is well formed (else ``None``: the entry is ignored
    by listings and rebuilt when asked for)."""
    with contextlib.suppress(OSError, ValueError):
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
        if _well_formed(meta):
            return meta
    return None


def _well_formed(meta: Any) -> bool:
    def whole(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    names = meta.get("class_names") if isinstance(meta, dict) else None
    return (
        isinstance(meta, dict)
        and meta.get("format") == CACHE_FORMAT
        and whole(meta.get("count"))
        and isinstance(meta.get("shape"), list)
        and len(meta["shape"]) == 3
        and all(whole(v) for v in meta["shape"])
        and all(isinstance(meta.get(k), str) for k in ("source", "kind"))
        and isinstance(meta.get("labelled"), bool)
        and (names is None or (isinstance(names, list) and all(isinstance(n, str) for n in names)))
    )


def _mapped(entry: CacheEntry) -> ImageDataset:
    """The entry's images as a tensor over a copy-on-write memory map (nothing is read until
    used), with its labels."""
    meta = entry.meta
    shape = tuple(int(n) for n in meta["shape"])
    count = entry.count
    if len(shape) != 3 or count < 1:
        raise ValueError(f"bad shape {shape} or count {count}")
    size = entry.images_file.stat().st_size
    if size != entry.nbytes:
        raise ValueError(f"{IMAGES_FILE} holds {size} bytes, expected {entry.nbytes}")
    images = np.memmap(entry.images_file, dtype=np.uint8, mode="c", shape=(count, *shape))
    labels = None
    if meta.get("labelled"):
        labels = torch.from_numpy(np.load(entry.path / LABELS_FILE, allow_pickle=False))
    dataset = ImageDataset(
        torch.from_numpy(images),
        source=meta["source"],
        labels=labels,
        class_names=meta.get("class_names"),
        kind=meta["kind"],
    )
    dataset.cache_file = entry.images_file
    dataset.cache_meta = meta
    return dataset


def build_entry(
    config_file: str | None, overrides: list[str], source: str | None, progress: bool = True
) -> str:
    """``ddpm cache build``: decode the data section of ``config_file`` and ``overrides``
    (``source`` is ``data.source``) into the cache now; returns what was built."""
    from ddpmkit.config import apply_overrides, load_config_file
    from ddpmkit.data import DataConfig, load_dataset

    overrides = [*overrides, "data.cache=on", *([f"data.source={source}"] if source else [])]
    settings = apply_overrides(load_config_file(config_file) if config_file else {}, overrides)
    dataset = load_dataset(DataConfig.from_dict(settings.get("data", {})), progress=progress)
    size = dataset.images_uint8.numel() / 2**20
    return f"{dataset.describe()}: {size:.1f} MiB in {dataset.cache_file.parent}"
