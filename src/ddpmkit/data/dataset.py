"""The data config, :class:`ImageDataset` (images in memory or memory-mapped from the cache),
uint8 scaling and flips."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ddpmkit.config.data import (  # noqa: F401 (re-exported: the data config lives with the others)
    CACHE_MIN_IMAGES,
    CACHE_MODES,
    DEFAULT_SPLIT,
    DIGITS,
    HF_PREFIX,
    HOLD_MODES,
    MAX_IMAGE_SIZE,
    MIN_IMAGE_SIZE,
    DataConfig,
)
from ddpmkit.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
"""File extensions read from an image folder (compared in lower case)."""


MAX_IMAGE_PIXELS = 64 * 1024 * 1024
"""Images with more pixels (8192 × 8192) are skipped unread: a decompression-bomb guard checked
on the header's size before decoding, for folders, ``hf:`` data sets, single images and ``.npz``
arrays. Pillow's own ``Image.MAX_IMAGE_PIXELS`` is left as it is; its warning is treated as an
error while decoding."""

MAX_CLASSES = 1_000_000
"""Labels must lie in [0, MAX_CLASSES): a guard against a tampered label array whose values
would size an embedding table."""


class SkippedFilesWarning(UserWarning):
    """Some files of an image folder (or images of an ``hf:`` data set) could not be read and
    were left out."""


# --------------------------------------------------------------------------------------------
# configuration


# --------------------------------------------------------------------------------------------
# scaling and augmentation


def from_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 levels 0..255 → float32 in [-1, 1]: ``x / 127.5 - 1``."""
    return images.to(torch.float32) / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in [-1, 1] → uint8 (clamped and rounded); the inverse of :func:`from_uint8`.

    NaN maps to 0 (black) rather than to an undefined integer.
    """
    x = torch.nan_to_num(images.to(torch.float32), nan=-1.0)
    return ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)


def random_hflip(batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image of a ``(B, C, H, W)`` batch left↔right with probability 1/2.

    The mask is drawn from ``generator`` on the generator's device (the CPU when it is ``None``,
    from the global RNG) and moved to the batch's device, so a CPU generator gives the same flips
    whatever device the batch is on. Returns a new tensor.
    """
    if batch.ndim != 4:
        raise ValueError(
            f"random_hflip expects a (B, C, H, W) batch, got shape {tuple(batch.shape)}"
        )
    device = generator.device if generator is not None else torch.device("cpu")
    flip = torch.rand(batch.shape[0], generator=generator, device=device) < 0.5
    flip = flip.to(batch.device).view(-1, 1, 1, 1)
    return torch.where(flip, batch.flip(-1), batch)


# --------------------------------------------------------------------------------------------
# labels


def checked_labels(values: Any, count: int, where: str) -> torch.Tensor:
    """Class labels of ``count`` images as an int64 tensor ``(count,)``, or one-line
    :class:`DataError`: integers only (a float array of whole numbers is refused too), one per
    image, in [0, :data:`MAX_CLASSES`)."""
    if isinstance(values, torch.Tensor):
        values = values.numpy()
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError) as e:
        raise DataError(f"{where}: labels are not an array of integers ({e})") from None
    if arr.dtype.kind not in "iu":
        raise DataError(f"{where}: labels must be integers, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise DataError(f"{where}: labels must be one-dimensional, got shape {arr.shape}")
    if arr.shape[0] != count:
        raise DataError(f"{where}: {arr.shape[0]} labels for {count} images")
    if arr.size:
        low, high = int(arr.min()), int(arr.max())
        if low < 0:
            raise DataError(f"{where}: labels must be >= 0, found {low}")
        if high >= MAX_CLASSES:
            raise DataError(f"{where}: label {high} is out of range (at most {MAX_CLASSES - 1})")
    return torch.from_numpy(arr.astype(np.int64))


# --------------------------------------------------------------------------------------------
# data set


class ImageDataset(Dataset):
    """Images as one uint8 tensor ``images_uint8`` of shape ``(N, C, H, W)``, in memory or
    memory-mapped from a disk-cache entry (``cache_file``, with its ``cache_meta``).

    ``dataset[i]`` is the float32 ``(C, H, W)`` image in [-1, 1]. ``labels`` is an int64 tensor
    ``(N,)`` when the source has class labels (digits, class subfolders, an ``hf:`` ClassLabel,
    npz ``labels``, CIFAR), else ``None``; ``class_names`` is the list of class names (index =
    label) when the source names its classes, else ``None``.
    """

    def __init__(
        self,
        images_uint8: torch.Tensor,
        *,
        source: str,
        labels: torch.Tensor | None = None,
        class_names: Sequence[str] | None = None,
        kind: str = "",
    ) -> None:
        if images_uint8.dtype != torch.uint8 or images_uint8.ndim != 4:
            raise ValueError(
                f"images_uint8 must be a uint8 (N, C, H, W) tensor, got {images_uint8.dtype} "
                f"{tuple(images_uint8.shape)}"
            )
        if images_uint8.shape[1] not in (1, 3):
            raise ValueError(f"images must have 1 or 3 channels, got {images_uint8.shape[1]}")
        n = int(images_uint8.shape[0])
        if labels is not None:
            if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64:
                labels = checked_labels(labels, n, f"'{source}'")
            elif labels.shape != (n,):
                raise DataError(
                    f"'{source}': labels must have shape ({n},), got {tuple(labels.shape)}"
                )
        if class_names is not None:
            if labels is None:
                raise DataError(f"'{source}': class names given without labels")
            names = list(class_names)
            if not all(isinstance(s, str) for s in names):
                raise DataError(f"'{source}': class names must be strings")
            if len(labels) and int(labels.max()) >= len(names):
                raise DataError(
                    f"'{source}': label {int(labels.max())} but only {len(names)} class names"
                )
            class_names = names
        self.images_uint8 = images_uint8
        self.labels = labels
        self.class_names: list[str] | None = class_names
        self.source = source
        self.kind = kind
        self.cache_file: Path | None = None  # the memory-mapped file, for a cached source
        self.cache_meta: dict[str, Any] = {}

    def __len__(self) -> int:
        return int(self.images_uint8.shape[0])

    def __getitem__(self, index: int) -> torch.Tensor:
        return from_uint8(self.images_uint8[index])

    @property
    def channels(self) -> int:
        return int(self.images_uint8.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images_uint8.shape[-1])

    @property
    def num_classes(self) -> int | None:
        """The number of classes (class names, else the largest label + 1), or ``None``."""
        if self.labels is None:
            return None
        if self.class_names is not None:
            return len(self.class_names)
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    def describe(self) -> str:
        """One line: source, count, size, channels and the number of classes."""
        what = f"{self.kind} {self.source}" if self.kind else self.source
        color = "grayscale" if self.channels == 1 else "RGB"
        k = self.num_classes
        classes = "" if k is None else f", {k} class{'es' if k != 1 else ''} (labelled)"
        return f"{what}: {len(self)} images, {self.image_size}x{self.image_size} {color}{classes}"

    def __repr__(self) -> str:
        return f"ImageDataset({self.describe()})"
