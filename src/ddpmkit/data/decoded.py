"""A source being decoded, part by part: what both the in-memory loader and the disk cache read.

Every source opens as a :class:`DecodedSource` whose ``parts`` iterator decodes lazily, one part
of uint8 ``(n, C, S, S)`` images (and their labels) at a time. :func:`collect` gathers the parts
into an in-memory :class:`~ddpmkit.data.dataset.ImageDataset`; the cache
(:mod:`ddpmkit.data.cache`) writes them to disk instead, so a source larger than memory never
has to be held whole. Nothing is decoded before ``parts`` is iterated, so a cache hit decodes
nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ddpmkit.data.dataset import ImageDataset, checked_labels
from ddpmkit.errors import DataError

Part = tuple[np.ndarray, "np.ndarray | None"]
"""Images ``(n, C, S, S)`` uint8 and their ``(n,)`` integer labels (``None``: unlabelled)."""


@dataclass
class DecodedSource:
    """One source, opened but not yet decoded.

    ``fingerprint`` identifies the bytes of the source (file sizes and times, archive CRCs, a
    data set's fingerprint) and ``settings`` the decoding (size, channels, split, columns): the
    disk cache's key is made of both; ``location`` names the source (a resolved path, a data
    set name), so that the cache replaces the entry of a source that changed. ``total`` is the
    number of images announced (``None`` when a stream does not say), an upper bound when
    unreadable images are skipped.
    ``class_names`` and ``labelled`` are final once the parts are exhausted, when ``finish``
    runs: it warns about skipped images (and returns
    the warning's text, kept with a cache entry) or raises when none could be read.
    """

    source: str
    location: str
    kind: str
    channels: int
    image_size: int
    parts: Iterator[Part]
    total: int | None
    class_names: list[str] | None
    fingerprint: dict[str, Any]
    settings: dict[str, Any]
    labelled: bool
    finish: Callable[[], str | None] = field(default=lambda: None)

    @property
    def image_bytes(self) -> int:
        return self.channels * self.image_size * self.image_size


def from_loader(
    load: Callable[[], ImageDataset],
    *,
    source: str,
    location: str,
    kind: str,
    channels: int,
    image_size: int,
    fingerprint: dict[str, Any],
    settings: dict[str, Any],
) -> DecodedSource:
    """A source that is decoded whole in memory anyway (digits, CIFAR): ``load`` runs when the
    parts are first read (never on a cache hit) and gives one part; its class names and whether
    it is labelled are filled in then."""
    decoded = DecodedSource(
        source=source,
        location=location,
        kind=kind,
        channels=channels,
        image_size=image_size,
        parts=iter(()),
        total=None,
        class_names=None,
        fingerprint=fingerprint,
        settings=settings,
        labelled=False,
    )

    def parts() -> Iterator[Part]:
        dataset = load()
        decoded.class_names = dataset.class_names
        decoded.labelled = dataset.labels is not None
        labels = None if dataset.labels is None else dataset.labels.numpy()
        yield dataset.images_uint8.numpy(), labels

    decoded.parts = parts()
    return decoded


def physical_memory() -> int | None:
    """This machine's memory in bytes (``None`` where the system does not say)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):  # not a POSIX system
        return None


def collect(decoded: DecodedSource) -> ImageDataset:
    """Decode every part into one in-memory :class:`ImageDataset` (one output array when the
    count is known, so the images are not held twice). Images announced to be larger than
    this machine's memory are refused before anything is decoded."""
    shape = (decoded.channels, decoded.image_size, decoded.image_size)
    memory = physical_memory()
    if decoded.total is not None and memory is not None:
        need = decoded.total * decoded.image_bytes
        if need > memory:
            raise DataError(
                f"'{decoded.source}': {need / 2**30:.1f} GiB of images do not fit in this "
                f"machine's {memory / 2**30:.1f} GiB of memory: set data.cache=on to decode "
                "them onto disk and read them from there"
            )
    parts: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    out = None if decoded.total is None else np.empty((decoded.total, *shape), dtype=np.uint8)
    count = 0
    for images, part_labels in decoded.parts:
        if out is not None and count + len(images) <= len(out):
            out[count : count + len(images)] = images
        else:
            parts.append(images)
        count += len(images)
        if part_labels is not None:
            labels.append(np.asarray(part_labels))
    decoded.finish()
    if out is None:
        array = np.concatenate(parts) if parts else np.zeros((0, *shape), dtype=np.uint8)
    elif parts:  # more than announced: the source grew while it was read
        array = np.concatenate([out[: len(out)], *parts])
    else:
        array = out if count == len(out) else out[:count].copy()
    return ImageDataset(
        torch.from_numpy(array),
        source=decoded.source,
        labels=gathered_labels(decoded, labels, count),
        class_names=decoded.class_names,
        kind=decoded.kind,
    )


def gathered_labels(
    decoded: DecodedSource, labels: list[np.ndarray], count: int
) -> torch.Tensor | None:
    """The labels of all parts, checked (integers, one per image, in range), or ``None``."""
    if not decoded.labelled:
        return None
    values = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
    return checked_labels(values, count, f"'{decoded.source}'")
