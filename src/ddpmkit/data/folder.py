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

import os
import warnings
from pathlib import Path

import numpy as np
import torch

from ddpmkit.data.dataset import (
    IMAGE_EXTENSIONS,
    DataConfig,
    ImageDataset,
    SkippedFilesWarning,
    from_uint8,
)
from ddpmkit.data.imaging import (
    bomb_warnings_as_errors,
    decode_file,
    decode_many,
    reason,
    skipped_message,
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


def load_folder(root: Path, cfg: DataConfig, *, source: str, progress: bool) -> ImageDataset:
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
    images, kept, bad = decode_many(
        [paths],
        len(paths),
        lambda p: decode_file(p, size, ch),
        size=size,
        channels=ch,
        desc=f"loading {root.name or source}",
        progress=progress,
    )
    details = skipped_message(bad, lambda i: relative[i])
    if len(kept) == 0:
        raise DataError(
            f"none of the {len(paths)} image files in folder '{source}' could be read "
            f"(looked for {exts}), e.g. {details}"
        )
    if bad:
        warnings.warn(
            f"skipped {len(bad)} unreadable image file{'s' if len(bad) != 1 else ''} of "
            f"{len(paths)} in folder '{source}': {details}",
            SkippedFilesWarning,
            stacklevel=3,
        )
    labels, names = None, None
    classes = class_folders(relative)
    if classes is not None:
        labels, names = torch.from_numpy(classes[0][kept]), classes[1]
    return ImageDataset(
        torch.from_numpy(images),
        source=source,
        labels=labels,
        class_names=names,
        kind="image folder",
    )


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
