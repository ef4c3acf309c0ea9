"""``.npz`` archives of uint8 images, read without pickle.

Images: ``arr_0``, or the only array other than ``labels``/``class_names``; (N, H, W, C) with
H == W and C ∈ {1, 3, 4}, or (N, H, W). Labels (optional): ``labels``, else ``arr_1`` next to
``arr_0`` (the layout ``ddpm sample --npz`` writes): N integers >= 0. Class names (optional):
``class_names``, a 1-D array of unicode strings (``np.array(["cat", "dog"])``).

The ``.npy`` header of each member is checked (dtype, shape, size declared vs size stored in the
archive, memory) before any data is read, so a tampered or hostile archive is one
:class:`DataError`, never a huge allocation; object arrays are refused unread.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import numpy as np

from ddpmkit.data.dataset import MAX_IMAGE_PIXELS, DataConfig, ImageDataset, checked_labels
from ddpmkit.data.imaging import convert_channels, reason, resize_square_float, to_tensor_nchw
from ddpmkit.errors import DataError

_NPY_MAGIC = b"\x93NUMPY"
_NPY_MAX_HEADER = 10_000  # numpy's own default limit on a .npy header
_READ_CHUNK = 1 << 24
_LABEL_KEYS = ("labels", "class_names")
_MAX_NAME_CHARS = 1024

_Check = Callable[[str, tuple[int, ...], np.dtype], None]


def _npz_header_error(
    where: str, shape: tuple[int, ...], dtype: np.dtype, problem: str
) -> DataError:
    hint = ""
    if dtype.kind == "f":
        hint = "; convert floats in 0..255 with np.clip(a, 0, 255).round().astype(np.uint8)"
    return DataError(
        f"{where}: {problem}; expected a uint8 array of shape (N, H, W, C) with H == W and "
        f"C in (1, 3, 4), or (N, H, W); found dtype {dtype}, shape {shape}{hint}"
    )


def _refuse_objects(where: str, dtype: np.dtype, expected: str) -> None:
    if dtype.hasobject:
        raise DataError(
            f"{where}: holds Python objects, which are never unpickled; expected {expected}"
        )


def check_image_header(where: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Refuse a ``.npy`` header that cannot hold images, before any data is read."""
    _refuse_objects(where, dtype, "a uint8 array")
    if dtype != np.uint8:
        raise _npz_header_error(where, shape, dtype, "wrong dtype")
    if (
        len(shape) not in (3, 4)
        or (len(shape) == 4 and shape[-1] not in (1, 3, 4))
        or any(n < 0 for n in shape)
    ):
        raise _npz_header_error(where, shape, dtype, "wrong shape")
    if shape[1] != shape[2]:
        raise _npz_header_error(where, shape, dtype, "images are not square")
    if shape[0] == 0 or shape[1] == 0:
        raise _npz_header_error(where, shape, dtype, "no images")
    if shape[1] * shape[2] > MAX_IMAGE_PIXELS:
        raise _npz_header_error(
            where, shape, dtype, f"images larger than {MAX_IMAGE_PIXELS} pixels are refused"
        )


def check_label_header(where: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    _refuse_objects(where, dtype, "an integer array of labels")
    if dtype.kind not in "iu" or dtype.fields is not None:
        raise DataError(f"{where}: labels must be integers, got dtype {dtype}")
    if len(shape) != 1:
        raise DataError(f"{where}: labels must be one-dimensional, got shape {shape}")


def check_names_header(where: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    _refuse_objects(where, dtype, "an array of unicode strings, e.g. np.array(['cat', 'dog'])")
    if dtype.kind != "U" or dtype.itemsize > 4 * _MAX_NAME_CHARS:
        raise DataError(
            f"{where}: class names must be unicode strings of at most {_MAX_NAME_CHARS} "
            f"characters, got dtype {dtype}"
        )
    if len(shape) != 1:
        raise DataError(f"{where}: class names must be one-dimensional, got shape {shape}")


def _physical_memory() -> int | None:
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):  # not a POSIX system
        return None


def read_npy(fp: IO[bytes], stored: int, where: str, check: _Check = check_image_header):
    """The array of an open ``.npy`` stream of ``stored`` bytes.

    The header is checked with ``check``, and the size it declares against the bytes stored
    (and the machine's memory), before anything is allocated.
    """
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        header = np.lib.format.read_array_header_1_0(fp, max_header_size=_NPY_MAX_HEADER)
    elif version == (2, 0):
        header = np.lib.format.read_array_header_2_0(fp, max_header_size=_NPY_MAX_HEADER)
    else:
        raise DataError(f"{where}: unsupported .npy format version {version[0]}.{version[1]}")
    shape, fortran_order, dtype = header
    shape = tuple(int(n) for n in shape)
    check(where, shape, dtype)
    count = int(np.prod(shape, dtype=object)) * dtype.itemsize
    data_bytes = stored - fp.tell()
    if count != data_bytes:
        raise DataError(
            f"{where}: truncated or tampered: the header declares shape {shape} ({count} bytes) "
            f"but {data_bytes} bytes of data are stored"
        )
    memory = _physical_memory()
    if memory is not None and count > memory:
        raise DataError(
            f"{where}: {count / 2**30:.1f} GiB of images do not fit in this machine's "
            f"{memory / 2**30:.1f} GiB of memory"
        )
    flat = np.empty(count, dtype=np.uint8)
    view = memoryview(flat)
    done = 0
    while done < count:
        chunk = fp.read(min(_READ_CHUNK, count - done))
        if not chunk:
            raise DataError(f"{where}: truncated: {count - done} bytes of image data missing")
        view[done : done + len(chunk)] = chunk
        done += len(chunk)
    if fp.read(1):  # reading to the end also makes zipfile check the CRC
        raise DataError(f"{where}: more data stored than the header declares")
    arr = flat.view(dtype)
    if fortran_order:
        return arr.reshape(shape[::-1]).transpose()
    return arr.reshape(shape)


def _where(source: str, key: str) -> str:
    return f"'{source}' [{key if key.isprintable() else repr(key)}]"


def read_npz(path: Path, source: str) -> tuple[np.ndarray, np.ndarray | None, list[str] | None]:
    """Images, labels (or ``None``) and class names (or ``None``) of a ``.npz`` (a bare
    ``.npy`` under a ``.npz`` name also works: images only)."""
    try:
        with open(path, "rb") as handle:
            if handle.read(len(_NPY_MAGIC)) == _NPY_MAGIC:  # a .npy saved under a .npz name
                handle.seek(0)
                size = os.fstat(handle.fileno()).st_size
                return read_npy(handle, size, f"'{source}'"), None, None
        with zipfile.ZipFile(path) as archive:
            members = {
                (info.filename[:-4] if info.filename.endswith(".npy") else info.filename): info
                for info in archive.infolist()
            }
            others = [k for k in members if k not in _LABEL_KEYS]
            if "arr_0" in members:
                key = "arr_0"
            elif len(others) == 1:
                (key,) = others
            else:
                found = ", ".join(map(repr, members)) if members else "no arrays"
                raise DataError(
                    f"'{source}': expected the images under key 'arr_0' or as the only array; "
                    f"found {found}"
                )

            def read(name: str, check: _Check) -> np.ndarray:
                with archive.open(members[name]) as member:
                    return read_npy(member, members[name].file_size, _where(source, name), check)

            images = read(key, check_image_header)
            label_key = "labels" if "labels" in members else None
            if label_key is None and key == "arr_0" and "arr_1" in members:
                label_key = "arr_1"
            labels = read(label_key, check_label_header) if label_key else None
            names = None
            if "class_names" in members:
                if labels is None:
                    raise DataError(f"'{source}': 'class_names' without a 'labels' array")
                names = [str(s) for s in read("class_names", check_names_header)]
            if labels is not None and labels.shape[0] != images.shape[0]:
                raise DataError(
                    f"{_where(source, label_key)}: {labels.shape[0]} labels for "
                    f"{images.shape[0]} images"
                )
            return images, labels, names
    except DataError:
        raise
    except MemoryError:
        raise DataError(f"'{source}': not enough memory to load its images") from None
    except Exception as e:  # noqa: BLE001 - zipfile, zlib, struct and numpy raise many kinds
        raise DataError(f"cannot read '{source}' as a .npz file: {reason(e)}") from None


def load_npz(path: Path, cfg: DataConfig, *, source: str, progress: bool) -> ImageDataset:
    arr, labels, names = read_npz(path, source)
    if arr.ndim == 3:
        arr = arr[..., None]
    arr = convert_channels(arr, cfg.channels)
    arr = resize_square_float(arr, cfg.image_size, progress=progress, desc="resizing")
    checked = None if labels is None else checked_labels(labels, len(arr), f"'{source}'")
    return ImageDataset(
        to_tensor_nchw(arr), source=source, labels=checked, class_names=names, kind="npz"
    )
