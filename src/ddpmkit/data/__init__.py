"""Image data sets: scikit-learn's digits, an image folder, a ``.npz`` array, CIFAR-10/100 as
distributed, MNIST-family idx files (``fashion-mnist`` built in), or a Hugging Face data set
(``hf:NAME[:SPLIT]``).

Every source opens as a :class:`~ddpmkit.data.decoded.DecodedSource` that decodes part by part
(:func:`open_source`); :func:`load_dataset` gathers the parts into one uint8 tensor
``(N, C, H, W)`` in memory, or writes them once into the disk cache (:mod:`.cache`) and maps
them, so a source larger than memory is never held whole. Either way the result is an
``ImageDataset`` (``images_uint8``, with the class labels of sources that have them:
``labels``, ``class_names``); items come out as float32 ``(C, H, W)`` in [-1, 1]
(``x / 127.5 - 1``). :func:`to_uint8` is the exact inverse on the 256 levels. One module per
source (:mod:`.digits`, :mod:`.folder`, :mod:`.npz`, :mod:`.cifar`, :mod:`.idx` for MNIST-family
idx files and the built-in ``fashion-mnist``, :mod:`.hf`); decoding and
resampling are shared (:mod:`.imaging`); the order of training batches and where they are read
from is :mod:`.loader`. It may import the config, errors and file I/O; never the diffusion,
the samplers or the network.

Resampling (one rule for every source):

* upscaling uses **bicubic**, downscaling **Lanczos** (antialiased: Pillow widens the kernel by
  the scale factor; encoded images also use ``reducing_gap=3`` so that huge photos are first
  box-reduced);
* for ``digits`` (8×8 → ``image_size``), ``.npz`` arrays and CIFAR the resampling is done in
  float (Pillow mode ``"F"``), then clipped to [0, 255] and rounded once. Pillow's 8-bit path
  clips after its horizontal pass, which moves some bicubic 8→16 digit pixels by up to 21 levels.

Why bicubic for the digits. Measured on all 1797 digits upscaled 8→16 (levels 0..255)::

    filter     stroke core   mid-gray px   RMSE at 8x8   above 255 (max)   below 0 (min)
    bilinear   218           50 %          24.3          0 %               0 %
    bicubic    235           41 %          14.2          2.6 % (+42)       23 % (-39)
    lanczos    237           38 %          12.9          4.1 % (+70)       23 % (-91)

(stroke core: mean output where the source pixel is 255; mid-gray: share of pixels in
(32, 223); RMSE at 8x8: error after box-downsampling the result back to 8×8.) Bilinear is soft
(strokes lose 15 % of their contrast, half the image is gray); Lanczos is barely sharper than
bicubic but overshoots twice as far and leaves visible ripples in the black background. Bicubic's
overshoot is small and clipping it only flattens stroke cores and the black background.

Encoded images (image folders and ``hf:`` data sets): the EXIF orientation is applied and, for
multi-frame files, the first frame is used. Transparency (alpha channel, palette or ``tRNS``
transparency) is composited on **white**, as an image viewer shows it, rather than dropped,
because the colour stored under transparent pixels is arbitrary. 16-bit grayscale is scaled to 8
bits (``v / 257``). Color → grayscale uses Pillow's ITU-R 601-2 luma; grayscale → RGB replicates
the gray level. Each image is resized so that its short side equals ``image_size`` and
center-cropped to a square, in one resampling step (``Image.resize(box=...)``); when the short
side already equals ``image_size`` the crop is pixel-exact (offset ``(w - h) // 2``) and nothing
is resampled. Unreadable images (truncated, corrupt, empty, not a regular file, or larger than
:data:`MAX_IMAGE_PIXELS`, checked from the header before anything is decoded) are skipped with one
:class:`SkippedFilesWarning` that counts them.

Nothing is unpickled except CIFAR's python batches, through the allow-list of
:mod:`.safe_pickle`; ``.npz`` members are read from their checked ``.npy`` headers.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

from ddpmkit.data import idx as _idx
from ddpmkit.data.cache import DataCache
from ddpmkit.data.cifar import FOLDER_NAMES as _CIFAR_FOLDERS
from ddpmkit.data.cifar import detect as _detect_cifar
from ddpmkit.data.cifar import load_cifar as _load_cifar
from ddpmkit.data.dataset import (
    CACHE_MIN_IMAGES,
    DIGITS,
    HF_PREFIX,
    IMAGE_EXTENSIONS,
    MAX_IMAGE_PIXELS,
    MAX_IMAGE_SIZE,
    MIN_IMAGE_SIZE,
    DataConfig,
    ImageDataset,
    SkippedFilesWarning,
    from_uint8,
    random_hflip,
    to_uint8,
)
from ddpmkit.data.decoded import DecodedSource, collect, from_loader, physical_memory
from ddpmkit.data.folder import load_image
from ddpmkit.data.folder import open_folder as _open_folder
from ddpmkit.data.imaging import resize_square_float as _resize_square_float  # noqa: F401 (plots)
from ddpmkit.data.npz import open_npz as _open_npz
from ddpmkit.errors import DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "MAX_IMAGE_SIZE",
    "MIN_IMAGE_SIZE",
    "DataConfig",
    "ImageDataset",
    "SkippedFilesWarning",
    "from_uint8",
    "load_dataset",
    "load_image",
    "open_source",
    "random_hflip",
    "to_uint8",
]

_SOURCES = (
    "'digits', 'fashion-mnist', an image folder, or a .npz file (or a CIFAR or idx folder, "
    "or hf:NAME)"
)
_SPLITS = ("train", "test")


def _stat_fingerprint(paths: list[Path]) -> dict[str, Any]:
    found = []
    for path in paths:
        try:
            st = path.stat()
            found.append((path.name, st.st_size, st.st_mtime_ns, st.st_ino))
        except OSError:
            found.append((path.name, None, None, None))
    return {"files": found}


def open_source(cfg: DataConfig, *, progress: bool = True) -> DecodedSource:
    """The source of ``cfg``, opened but not decoded (see :mod:`ddpmkit.data.decoded`).

    Raises :class:`ConfigError` for bad config values and :class:`DataError` for a source that is
    missing, empty or unreadable (some of which only shows while its parts are read).
    """
    cfg.validate()
    settings = {"image_size": cfg.image_size, "channels": cfg.channels}
    if cfg.source == DIGITS:
        from ddpmkit.data.digits import load_digits_dataset

        return from_loader(
            lambda: load_digits_dataset(cfg, progress=progress),
            source=DIGITS,
            location=DIGITS,
            kind="scikit-learn",
            channels=cfg.channels,
            image_size=cfg.image_size,
            fingerprint={"digits": 1},
            settings=settings,
        )
    if cfg.source.startswith(HF_PREFIX):
        from ddpmkit.data.hf import open_hf

        return open_hf(cfg, progress=progress)
    source, split = cfg.source, cfg.split
    path = Path(source).expanduser()
    head, sep, suffix = source.rpartition(":")
    builtin = (head if sep and suffix in _SPLITS else source) == _idx.FASHION_MNIST
    if sep and suffix in _SPLITS and not path.exists() and (builtin or _exists(head)):
        if split is not None and split != suffix:
            raise DataError(
                f"data source '{source}' names split '{suffix}' but data.split is '{split}': "
                "give one of them"
            )
        path, split = Path(head).expanduser(), suffix
    if builtin:
        folder = _idx.fashion_mnist_folder(source)
        images = _idx.find_idx(folder) or []
        files = _idx.choose_files(
            images, split or "train", source=source, names=_idx.FASHION_MNIST_CLASSES
        )
        return _open_idx(files, cfg, source, settings, progress)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if path.is_symlink():
            raise DataError(f"data source '{source}' is a broken symbolic link") from None
        raise DataError(f"data source '{source}' not found: give {_SOURCES}") from None
    except OSError as e:  # a symlink loop, a name too long, no permission...
        raise DataError(f"cannot access data source '{source}': {e.strerror or e}") from None
    if stat.S_ISDIR(mode) and _idx.find_idx(path) is not None:
        return _open_idx(_idx.files_of(path, split, source=source), cfg, source, settings, progress)
    if stat.S_ISREG(mode) and _idx.is_images_file(path):
        return _open_idx(_idx.files_of(path, split, source=source), cfg, source, settings, progress)
    if stat.S_ISDIR(mode):
        fmt = _detect_cifar(path)
        if fmt is not None:
            split = split or "train"
            files = fmt.train if split == "train" else fmt.test
            return from_loader(
                lambda: _load_cifar(path, fmt, split, cfg, source=source, progress=progress),
                source=source,
                location=str(path.resolve()),
                kind=f"{fmt.name} {split}",
                channels=cfg.channels,
                image_size=cfg.image_size,
                fingerprint=_stat_fingerprint([path / f for f in files]),
                settings={**settings, "split": split},
            )
        if split is not None and split != "train":
            raise DataError(
                f"data source '{source}' is an image folder, which has no splits: point "
                f"data.source at the '{split}' images instead"
            )
        try:
            return _open_folder(path, cfg, source=source, progress=progress)
        except DataError as e:
            nested = [n for n in _CIFAR_FOLDERS if (path / n).is_dir()]
            if nested and str(e).startswith("no image files found"):
                raise DataError(
                    f"data source '{source}' holds no images but the CIFAR folder "
                    f"'{nested[0]}': give '{path / nested[0]}' as the source"
                ) from None
            raise
    if stat.S_ISREG(mode) and path.suffix.lower() == ".npz":
        return _open_npz(path, cfg, source=source, progress=progress)
    what = "a file but not a .npz archive" if stat.S_ISREG(mode) else "not a file or a folder"
    raise DataError(f"data source '{source}' is {what}: give {_SOURCES}")


def _exists(path: str) -> bool:
    """Whether ``path`` (a source with its ``:train``/``:test`` removed) has splits: a folder
    (CIFAR, idx) or an idx images file."""
    found = Path(path).expanduser()
    return found.is_dir() or (found.is_file() and _idx.is_images_file(found))


def _open_idx(
    files: _idx.IdxFiles, cfg: DataConfig, source: str, settings: dict, progress: bool
) -> DecodedSource:
    paths = [files.images, *([files.labels] if files.labels else [])]
    return from_loader(
        lambda: _idx.load_idx(files, cfg, source=source, progress=progress),
        source=source,
        location=str(files.images.resolve()),
        kind=files.kind,
        channels=cfg.channels,
        image_size=cfg.image_size,
        fingerprint=_stat_fingerprint(paths),
        settings={**settings, "split": files.split, "idx": 1},
    )


def uses_cache(cfg: DataConfig, decoded: DecodedSource) -> bool:
    """``data.cache``: ``on``, or ``auto`` for a stream, a source of :data:`CACHE_MIN_IMAGES`
    images or more, or one whose images take more than a quarter of this machine's memory
    (digits, CIFAR and the idx sources such as ``fashion-mnist``, read whole in seconds at most,
    are not counted up front: ``auto`` leaves them in memory)."""
    if cfg.cache != "auto":
        return cfg.cache == "on"
    if cfg.streaming:
        return True
    if decoded.total is None:
        return False
    if decoded.total >= CACHE_MIN_IMAGES:
        return True
    memory = physical_memory()
    return memory is not None and 4 * decoded.total * decoded.image_bytes > memory


def load_dataset(
    cfg: DataConfig, *, progress: bool = True, distributed: bool = False
) -> ImageDataset:
    """The images of ``cfg``'s source: from the disk cache (decoded into it first if needed)
    when :func:`uses_cache`, else decoded into memory.

    ``distributed``: every process of the process group calls this; process 0 loads first (and
    decodes into the cache), the others then find the cache instead of decoding it again.
    Raises :class:`ConfigError` for bad config values and :class:`DataError` for a source that is
    missing, empty or unreadable, or a cache that cannot be written.
    """
    import torch.distributed as dist

    waits = distributed and dist.is_initialized() and dist.get_world_size() > 1
    if waits and dist.get_rank() != 0:
        dist.barrier()  # process 0 loads first
    try:
        decoded = open_source(cfg, progress=progress)
        if uses_cache(cfg, decoded):
            return DataCache().load(decoded)
        return collect(decoded)
    finally:
        if waits and dist.get_rank() == 0:
            dist.barrier()
