"""Where a run's images come from and how they are shaped (:class:`DataConfig`); no data
source is imported here: reading is :func:`ddpmkit.data.load_dataset`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ddpmkit.config.messages import check_choice
from ddpmkit.errors import ConfigError

MIN_IMAGE_SIZE = 4
MAX_IMAGE_SIZE = 1024
DIGITS = "digits"
CACHE_MODES = ("auto", "on", "off")
HOLD_MODES = ("auto", "device", "stream")
CACHE_MIN_IMAGES = 10_000
"""With ``data.cache=auto``, sources of this many images or more are decoded into the disk
cache (50,000 PNG files take 12 s to decode on the CPU box, and 0.1 s to open from the cache)."""
FASHION_MNIST = "fashion-mnist"
HF_PREFIX = "hf:"
DEFAULT_SPLIT = "train"


def is_fashion_mnist(source: str) -> bool:
    """Whether ``source`` is the built-in Fashion-MNIST (``fashion-mnist[:SPLIT]``)."""
    return source.partition(":")[0] == FASHION_MNIST


def _optional_name(value: Any, what: str) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not value.strip() or not value.isprintable():
        raise ConfigError(f"{what} must be a non-empty name (or left unset), got {value!r}")


@dataclass
class DataConfig:
    """Where the images come from and how they are shaped; every field is JSON-friendly.

    ``source`` is ``"digits"`` (scikit-learn's 8×8 digits), ``"fashion-mnist"`` (Debian's
    ``dataset-fashion-mnist`` package, read from its idx files), a path to an image folder, a
    ``.npz`` file, an extracted CIFAR-10/100 folder or a folder (or images file) of MNIST-family
    idx files (``PATH:test`` picks the test split), or ``hf:NAME[:SPLIT]`` for a Hugging Face
    data set (a Hub name or a local data set folder); a folder literally named ``digits`` or
    ``fashion-mnist`` must be given as ``./digits``. ``split`` picks the split of ``hf:``, CIFAR
    and idx sources when the source names none (default ``"train"``); ``hf_config``
    is the Hub data set's configuration name; ``image_column`` and ``label_column`` name the
    columns of an ``hf:`` data set (unset: the ``Image`` and the ``ClassLabel`` feature);
    ``streaming`` reads an ``hf:`` data set row by row as it is decoded instead of loading it
    first.

    ``cache``: ``"on"`` decodes the source once into the disk cache
    (:mod:`ddpmkit.data.cache`) and reads it from there afterwards, ``"off"`` decodes it into
    memory every time, ``"auto"`` caches sources of :data:`CACHE_MIN_IMAGES` images or more (and
    every stream). ``hold``: where training keeps the images: ``"device"`` (all of them on the
    training device), ``"stream"`` (batches read from memory or the cache by a DataLoader and
    moved per step), ``"auto"`` (the device when they fit in its share, see
    :func:`ddpmkit.data.loader.choose_hold`). ``loader_workers``: DataLoader worker processes
    when streaming (-1: chosen for the device).
    :meth:`validate` checks the values only; whether the source exists is checked by
    :func:`load_dataset`, so a checkpoint's config can be rebuilt on a machine without the data.
    """

    source: str = DIGITS
    image_size: int = 16
    channels: int = 1
    random_flip: bool = False
    split: str | None = None
    hf_config: str | None = None
    image_column: str | None = None
    label_column: str | None = None
    streaming: bool = False
    cache: str = "auto"
    hold: str = "auto"
    loader_workers: int = -1

    def __post_init__(self) -> None:
        if isinstance(self.source, os.PathLike):
            self.source = os.fspath(self.source)

    def read_as_written(self, source: str) -> DataConfig:
        """``source`` at this config's size, channels and loading settings, read as written:
        its own split (a ``:SPLIT`` suffix, else the source's default), no flips. What
        ``ddpm eval --data`` and ``ddpm nll --data`` judge a run's samples or bound on."""
        return replace(self, source=source, split=None, random_flip=False)

    def validate(self) -> None:
        """Raise :class:`ConfigError` on a value of the wrong type or out of range."""
        if not isinstance(self.source, str) or not self.source.strip() or "\x00" in self.source:
            raise ConfigError(
                "data source must be 'digits', 'fashion-mnist', an image folder, a .npz path, a "
                f"CIFAR or idx folder or hf:NAME, got {self.source!r}"
            )
        if self.source.startswith(HF_PREFIX) and not self.source[len(HF_PREFIX) :].split(":")[0]:
            raise ConfigError(f"data source {self.source!r} names no data set: write hf:NAME")
        size = self.image_size
        if isinstance(size, bool) or not isinstance(size, int):
            raise ConfigError(f"image_size must be an integer, got {size!r}")
        if not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
            raise ConfigError(
                f"image_size must lie in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}], got {size}"
            )
        ch = self.channels
        if isinstance(ch, bool) or ch not in (1, 3):
            raise ConfigError(f"channels must be 1 (grayscale) or 3 (RGB), got {ch!r}")
        if not isinstance(self.random_flip, bool):
            raise ConfigError(f"random_flip must be true or false, got {self.random_flip!r}")
        _optional_name(self.split, "data.split")
        _optional_name(self.hf_config, "data.hf_config")
        _optional_name(self.image_column, "data.image_column")
        _optional_name(self.label_column, "data.label_column")
        if not isinstance(self.streaming, bool):
            raise ConfigError(f"data.streaming must be true or false, got {self.streaming!r}")
        if self.streaming and not self.source.startswith(HF_PREFIX):
            raise ConfigError("data.streaming applies to hf: sources only")
        check_choice("data.cache", self.cache, CACHE_MODES)
        check_choice("data.hold", self.hold, HOLD_MODES)
        workers = self.loader_workers
        if isinstance(workers, bool) or not isinstance(workers, int) or not -1 <= workers <= 64:
            raise ConfigError(
                f"data.loader_workers must be an integer in [-1, 64] (-1: auto), got {workers!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DataConfig:
        """Build and validate a config; unknown keys are a :class:`ConfigError`."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ConfigError(
                f"unknown data option(s) {', '.join(map(repr, unknown))}; known: {', '.join(known)}"
            )
        cfg = cls(**d)
        cfg.validate()
        return cfg
