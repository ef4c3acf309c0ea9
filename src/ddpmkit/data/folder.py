"""A folder of image files, searched recursively; class subfolders give labels.

Hidden files and folders (names starting with ``.``) are skipped; paths are sorted, so the order
is deterministic. Symbolic links to files are read; links to folders are not followed (a link
loop cannot hang the search, and nothing outside the folder is read). Unreadable files are
skipped with one :class:`SkippedFilesWarning` that counts them.

Labels: when every image sits exactly one level below the folder, in two or more subfolders
(``root/cat/1.png``, ``root/dog/7.jpg``), the subfolder names, sorted, are the classes
``0..K-1`` (torchvision's ``ImageFolder`` convention).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddpmkit.data.dataset import (
    IMAGE_EXTENSIONS,
    DataConfig,
    ImageDataset,
    from_uint8,
)
from ddpmkit.data.decoded import DecodedSource, Part, collect
from ddpmkit.data.imaging import (
    DecodeFailures,
    bomb_warnings_as_errors,
    decode_chunks,
    decode_file,
    reason,
    skipped_message,
    warn_skipped,
)
from ddpmkit.errors import DataError


def list_images(root: Path) -> list[tuple[str, Path]]:
    """``(relative posix path, path)`` of every image file below ``root``, sorted."""
    found: list[tuple[str, Path]] = []
    # followlinks=False: a link to a folder (maybe to an ancestor: a loop) is not descended
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            p = Path(dirpath) / name
            found.append((p.relative_to(root).as_posix(), p))
    found.sort(key=lambda rp: rp[0])
    return found


def class_folders(relative: list[str]) -> tuple[np.ndarray, list[str]] | None:
    """Labels and sorted class names when every path is ``class/file`` with two or more
    classes, else ``None``."""
    parts = [r.split("/") for r in relative]
    if not parts or any(len(p) != 2 for p in parts):
        return None
    names = sorted({p[0] for p in parts})
    if len(names) < 2:
        return None
    index = {name: k for k, name in enumerate(names)}
    return np.asarray([index[p[0]] for p in parts], dtype=np.int64), names


def folder_fingerprint(found: list[tuple[str, Path]]) -> dict[str, Any]:
    """The identity of a folder's images for the disk cache: a hash of every image's relative
    path, size, modification time and inode (changed files, added or removed ones all change
    it; an in-place edit that keeps the size within the file system's timestamp resolution does
    not)."""
    digest = hashlib.sha256()
    for relative, path in found:
        try:
            st = path.stat()
            entry = f"{relative}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\n"
        except OSError as e:
            entry = f"{relative}\0{type(e).__name__}\n"
        digest.update(entry.encode("utf-8", "surrogateescape"))
    return {"files": len(found), "sha256": digest.hexdigest()}


def open_folder(root: Path, cfg: DataConfig, *, source: str, progress: bool) -> DecodedSource:
    """The images of ``root``, decoded part by part (see :mod:`ddpmkit.data.decoded`)."""
    found = list_images(root)
    exts = ", ".join(IMAGE_EXTENSIONS)
    if not found:
        raise DataError(
            f"no image files found in folder '{source}' (searched recursively for {exts}, "
            f"any letter case; hidden files skipped)"
        )
    relative = [r for r, _ in found]
    paths = [p for _, p in found]
    size, ch = cfg.image_size, cfg.channels
    classes = class_folders(relative)
    failures = DecodeFailures()

    def parts() -> Iterator[Part]:
        decoded = decode_chunks(
            [paths],
            len(paths),
            lambda p: decode_file(p, size, ch),
            size=size,
            channels=ch,
            desc=f"loading {root.name or source}",
            progress=progress,
            failures=failures,
        )
        for images, kept in decoded:
            yield images, None if classes is None else classes[0][kept]

    def finish() -> str | None:
        if len(failures) == len(paths):
            raise DataError(
                f"none of the {len(paths)} image files in folder '{source}' could be read "
                f"(looked for {exts}), e.g. {skipped_message(failures, lambda i: relative[i])}"
            )
        return warn_skipped(
            failures, len(paths), "image file", f"in folder '{source}'", lambda i: relative[i]
        )

    return DecodedSource(
        source=source,
        location=str(root.resolve()),
        kind="image folder",
        channels=ch,
        image_size=size,
        parts=parts(),
        total=len(paths),
        class_names=None if classes is None else classes[1],
        fingerprint={"folder": str(root.resolve()), **folder_fingerprint(found)},
        settings={"image_size": size, "channels": ch},
        labelled=classes is not None,
        finish=finish,
    )


def load_folder(root: Path, cfg: DataConfig, *, source: str, progress: bool) -> ImageDataset:
    """The images of ``root`` decoded into memory."""
    return collect(open_folder(root, cfg, source=source, progress=progress))


def load_image(path: str | Path, size: int, channels: int = 3) -> torch.Tensor:
    """One image file → float32 ``(C, size, size)`` in [-1, 1], resized and center-cropped like a
    folder dataset; a missing or unreadable file is a :class:`DataError`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image '{path}' not found")
    try:
        with bomb_warnings_as_errors():
            array = decode_file(path, size, channels)
    except Exception as e:  # noqa: BLE001 - Pillow raises many kinds for a bad file
        raise DataError(f"cannot read image '{path}': {reason(e)}") from None
    return from_uint8(torch.from_numpy(array.copy()))
