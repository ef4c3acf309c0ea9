"""Decoding and resampling shared by every source.

* Arrays (``digits``, ``.npz``, CIFAR): :func:`convert_channels` then :func:`resize_square_float`
  (resampled in float, clipped and rounded once).
* Encoded images (folder files, ``hf:`` image bytes): :func:`decode_image` — EXIF orientation,
  first frame, 16-bit → 8-bit, transparency on white, mode conversion (:func:`to_mode`), short
  side → ``size`` and center crop in one resampling step (:func:`square`). The same bytes give
  the same pixels whichever source they come from. :func:`decode_chunks` runs it on a thread pool,
  one part at a time,
  and collects the failures.
"""

from __future__ import annotations

import contextlib
import os
import stat
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm import tqdm

from ddpmkit.data.dataset import MAX_IMAGE_PIXELS, SkippedFilesWarning
from ddpmkit.errors import DataError

UPSCALE_FILTER = Image.Resampling.BICUBIC
DOWNSCALE_FILTER = Image.Resampling.LANCZOS
REDUCING_GAP = 3.0  # Pillow: box-reduce first down to 3× the target, then Lanczos
LOAD_CHUNK = 2048  # images handed to the thread pool at a time
MAX_EXAMPLES = 3


# --------------------------------------------------------------------------------------------
# array helpers (NHWC uint8 numpy)


def resample_filter(src: int, dst: int) -> Image.Resampling:
    return UPSCALE_FILTER if dst > src else DOWNSCALE_FILTER


def resize_square_float(arr: np.ndarray, size: int, *, progress: bool, desc: str) -> np.ndarray:
    """Resize square uint8 images ``(N, S, S, C)`` to ``(N, size, size, C)``.

    Resampled in float per channel, then clipped to [0, 255] and rounded once.
    """
    if arr.shape[1] == size:
        return arr
    return _resample_into(np.uint8, arr, size, progress=progress, desc=desc)


def resize_square_levels(arr: np.ndarray, size: int) -> np.ndarray:
    """:func:`resize_square_float`'s rule on levels of any real dtype: ``(N, S, S, C)`` →
    float32 ``(N, size, size, C)``, resampled in float per channel (bicubic up, Lanczos down),
    clipped to [0, 255] and rounded once, so whole numbers; the feature extractors upscale
    with it (:func:`ddpmkit.metrics.digits_cnn.preprocess`)."""
    return _resample_into(np.float32, arr, size, progress=False, desc="")


def _resample_into(
    dtype: type, arr: np.ndarray, size: int, *, progress: bool, desc: str
) -> np.ndarray:
    """The one resampling loop, written straight into an array of ``dtype`` (uint8 for the
    loaders' images: no float copy of a whole data set)."""
    n, src, _, c = arr.shape
    filt = resample_filter(src, size)
    out = np.empty((n, size, size, c), dtype=dtype)
    for i in tqdm(range(n), desc=desc, unit="img", disable=not progress, leave=False):
        for k in range(c):
            img = Image.fromarray(np.ascontiguousarray(arr[i, :, :, k], dtype=np.float32))
            res = np.asarray(img.resize((size, size), filt), dtype=np.float32)
            out[i, :, :, k] = np.clip(np.rint(res), 0, 255)
    return out


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """``(..., 4)`` uint8 RGBA → ``(..., 3)`` RGB composited on white, rounded."""
    rgb = rgba[..., :3].astype(np.uint32)
    a = rgba[..., 3:].astype(np.uint32)
    return ((rgb * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def rgb_to_gray(rgb: np.ndarray) -> np.ndarray:
    """``(..., 3)`` uint8 → ``(..., 1)``: Pillow's ITU-R 601-2 luma, bit for bit."""
    x = rgb.astype(np.uint32)
    y = (x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 0x8000) >> 16
    return y.astype(np.uint8)[..., None]


def convert_channels(arr: np.ndarray, channels: int) -> np.ndarray:
    """NHWC uint8 with C ∈ {1, 3, 4} → C = ``channels`` (alpha composited on white)."""
    if arr.shape[-1] == 4:
        arr = composite_on_white(arr)
    if arr.shape[-1] == channels:
        return arr
    if channels == 1:
        return rgb_to_gray(arr)
    return np.repeat(arr, 3, axis=-1)


def to_tensor_nchw(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2)))


# --------------------------------------------------------------------------------------------
# encoded images


def high_depth_to_l(img: Image.Image) -> Image.Image:
    """16/32-bit integer or float grayscale → 8-bit "L" (16-bit: v/257; float in [0, 1]: v·255)."""
    a = np.asarray(img)
    if img.mode == "F":
        a = a.astype(np.float64)
        finite = a[np.isfinite(a)]
        if finite.size and finite.max() <= 1.0:
            a = a * 255.0
    else:
        a = a.astype(np.float64)
        peak = a.max() if a.size else 0
        if img.mode.startswith("I;16") or 255 < peak <= 65535:
            a = a / 257.0
        elif peak > 65535:
            a = a * (255.0 / peak)
    return Image.fromarray(np.clip(np.rint(np.nan_to_num(a)), 0, 255).astype(np.uint8))


def to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Convert to "L" or "RGB"; transparency is composited on white."""
    if img.mode.startswith("I") or img.mode == "F":
        img = high_depth_to_l(img)
    has_alpha = img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba).convert("RGB")
    target = "L" if channels == 1 else "RGB"
    if img.mode != target:
        if img.mode not in ("L", "RGB", "1"):
            img = img.convert("RGB")  # P, CMYK, YCbCr, ...
        img = img.convert(target)
    return img


def square(img: Image.Image, size: int) -> Image.Image:
    """Short side → ``size``, center crop to ``size × size``, in one resampling step."""
    w, h = img.size
    m = min(w, h)
    if m == size:
        if w == h:
            return img
        left, top = (w - m) // 2, (h - m) // 2
        return img.crop((left, top, left + m, top + m))
    box = ((w - m) / 2, (h - m) / 2, (w + m) / 2, (h + m) / 2)
    if size > m:
        return img.resize((size, size), UPSCALE_FILTER, box=box)
    return img.resize((size, size), DOWNSCALE_FILTER, box=box, reducing_gap=REDUCING_GAP)


class UnreadableImage(DataError):
    """One image cannot be used (too large, not a regular file, no data)."""


def decode_image(fp: str | Path | IO[bytes], size: int, channels: int) -> np.ndarray:
    """One encoded image (a path or a binary stream) → ``(C, size, size)`` uint8; raises
    whatever Pillow raises for a bad file. Call it inside :func:`bomb_warnings_as_errors`."""
    with Image.open(fp) as im:
        w, h = im.size
        if w * h > MAX_IMAGE_PIXELS:
            raise UnreadableImage(f"{w}x{h} pixels, more than the limit of {MAX_IMAGE_PIXELS}")
        # JPEG only: let the decoder downscale by 1/2..1/8 while keeping both sides >= 3·size.
        im.draft(None, (int(size * REDUCING_GAP), int(size * REDUCING_GAP)))
        im.load()
        try:
            img = ImageOps.exif_transpose(im)
        except Exception:  # noqa: BLE001 - a broken EXIF block should not lose the image
            img = im.copy()
    img = square(to_mode(img, channels), size)
    a = np.asarray(img, dtype=np.uint8)
    if a.ndim == 2:
        return a[None]
    return a.transpose(2, 0, 1)


def decode_file(path: Path, size: int, channels: int) -> np.ndarray:
    """:func:`decode_image` of a regular file (a FIFO would block ``open()`` forever)."""
    if not stat.S_ISREG(path.stat().st_mode):
        raise UnreadableImage("not a regular file")
    return decode_image(path, size, channels)


@contextlib.contextmanager
def bomb_warnings_as_errors() -> Iterator[None]:
    """Raise Pillow's DecompressionBombWarning as an error (the file is then skipped).

    Enter it in the thread that starts the decoding threads: ``catch_warnings`` swaps the
    process-wide filter list, which the worker threads read.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def reason(e: BaseException) -> str:
    """One short line: the exception's type and the first line of its message."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if len(msg) > 80:
        msg = msg[:77] + "..."
    if isinstance(e, DataError) and msg:
        return msg
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _try(decode: Callable[[Any], np.ndarray], item: Any) -> np.ndarray | Exception:
    try:
        return decode(item)
    except Exception as e:  # noqa: BLE001 - any failure of one image means "unreadable"
        return e


class DecodeFailures(list):
    """``(index, exception)`` of every item that did not decode, filled while decoding."""


def decode_chunks(
    chunks: Iterable[list[Any]],
    total: int | None,
    decode: Callable[[Any], np.ndarray],
    *,
    size: int,
    channels: int,
    desc: str,
    progress: bool,
    failures: DecodeFailures,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Decode items, given in chunks, on a thread pool, :data:`LOAD_CHUNK` at a time.

    Yields ``(images, kept)``: the ``(n, C, size, size)`` uint8 images of one part that decoded
    and their indices among all the items; every failure is appended to ``failures``. Only one
    part is held at a time, so a source larger than memory can be decoded onto disk. ``total``
    (``None``: unknown, e.g. a stream) sizes the progress bar and bounds the count.
    """
    index = 0
    workers = max(1, min(8, os.cpu_count() or 1))
    bar = tqdm(total=total, desc=desc, unit="img", disable=not progress)
    with bar, bomb_warnings_as_errors(), ThreadPoolExecutor(max_workers=workers) as pool:
        for chunk in chunks:
            for start in range(0, len(chunk), LOAD_CHUNK):
                part = chunk[start : start + LOAD_CHUNK]
                if total is not None and index + len(part) > total:
                    raise DataError(f"{desc}: more images than the {total} announced")
                out = np.empty((len(part), channels, size, size), dtype=np.uint8)
                kept: list[int] = []
                for res in pool.map(_try, [decode] * len(part), part):
                    if isinstance(res, Exception):
                        failures.append((index, res))
                    else:
                        out[len(kept)] = res
                        kept.append(index)
                    index += 1
                bar.update(len(part))
                if kept:
                    yield out[: len(kept)], np.asarray(kept, dtype=np.int64)


def warn_skipped(
    failures: list[tuple[int, Exception]],
    total: int,
    noun: str,
    where: str,
    name: Callable[[int], str],
) -> str | None:
    """Warn once (:class:`SkippedFilesWarning`) that ``failures`` of ``total`` items were
    skipped — ``skipped 3 unreadable image files of 40 in folder 'x': 'a.png' (...), ...`` —
    and return that line, or ``None`` when nothing was skipped."""
    if not failures:
        return None
    plural = "s" if len(failures) != 1 else ""
    message = (
        f"skipped {len(failures)} unreadable {noun}{plural} of {total} {where}: "
        f"{skipped_message(failures, name)}"
    )
    warnings.warn(message, SkippedFilesWarning, stacklevel=5)
    return message


def skipped_message(bad: list[tuple[int, Exception]], name: Callable[[int], str]) -> str:
    """``'a.png' (reason), 'b.png' (reason), 'c.png' (reason) and 4 more``."""
    examples = ", ".join(f"'{name(i)}' ({reason(e)})" for i, e in bad[:MAX_EXAMPLES])
    more = f" and {len(bad) - MAX_EXAMPLES} more" if len(bad) > MAX_EXAMPLES else ""
    return examples + more
