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

import contextlib
import os
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import numpy as np
from tqdm.auto import tqdm

from ddpmkit.data.dataset import MAX_IMAGE_PIXELS, DataConfig, ImageDataset, checked_labels
from ddpmkit.data.decoded import DecodedSource, Part, collect, physical_memory
from ddpmkit.data.imaging import convert_channels, reason, resize_square_float
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


def read_npy_header(
    fp: IO[bytes], stored: int, where: str, check: _Check
) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Shape, Fortran order and dtype of an open ``.npy`` stream of ``stored`` bytes, checked
    with ``check``, and the size they declare checked against the bytes stored; the stream is
    left at the start of the data."""
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
    return shape, bool(fortran_order), dtype


def _read_exactly(fp: IO[bytes], out: np.ndarray, where: str) -> None:
    view = memoryview(out.reshape(-1).view(np.uint8))
    done = 0
    while done < len(view):
        chunk = fp.read(min(_READ_CHUNK, len(view) - done))
        if not chunk:
            raise DataError(f"{where}: truncated: {len(view) - done} bytes of image data missing")
        view[done : done + len(chunk)] = chunk
        done += len(chunk)


def _check_end(fp: IO[bytes], where: str) -> None:
    if fp.read(1):  # reading to the end also makes zipfile check the CRC
        raise DataError(f"{where}: more data stored than the header declares")


def _read_whole(fp: IO[bytes], header: tuple, where: str) -> np.ndarray:
    shape, fortran_order, dtype = header
    count = int(np.prod(shape, dtype=object)) * dtype.itemsize
    memory = physical_memory()
    if memory is not None and count > memory:
        raise DataError(
            f"{where}: {count / 2**30:.1f} GiB of images do not fit in this machine's "
            f"{memory / 2**30:.1f} GiB of memory"
        )
    flat = np.empty(count, dtype=np.uint8)
    _read_exactly(fp, flat, where)
    _check_end(fp, where)
    arr = flat.view(dtype)
    if fortran_order:
        return arr.reshape(shape[::-1]).transpose()
    return arr.reshape(shape)


def read_npy(fp: IO[bytes], stored: int, where: str, check: _Check = check_image_header):
    """The array of an open ``.npy`` stream of ``stored`` bytes.

    The header is checked with ``check``, and the size it declares against the bytes stored
    (and the machine's memory), before anything is allocated.
    """
    return _read_whole(fp, read_npy_header(fp, stored, where, check), where)


def read_npy_rows(
    fp: IO[bytes], shape: tuple[int, ...], where: str, rows: int
) -> Iterator[np.ndarray]:
    """The uint8 image array of a C-order ``.npy`` stream (header already read), ``rows``
    images at a time: only one part is held in memory."""
    total = shape[0]
    for start in range(0, total, rows):
        part = np.empty((min(rows, total - start), *shape[1:]), dtype=np.uint8)
        _read_exactly(fp, part, where)
        yield part
    _check_end(fp, where)


def _where(source: str, key: str) -> str:
    return f"'{source}' [{key if key.isprintable() else repr(key)}]"


_ROWS_BYTES = 64 << 20  # images read, converted and resized per part: about 64 MiB


def _members(archive: zipfile.ZipFile, source: str) -> tuple[dict[str, zipfile.ZipInfo], str]:
    """The archive's members by array name, and the name of the image array."""
    members = {
        (info.filename[:-4] if info.filename.endswith(".npy") else info.filename): info
        for info in archive.infolist()
    }
    others = [k for k in members if k not in _LABEL_KEYS]
    if "arr_0" in members:
        return members, "arr_0"
    if len(others) == 1:
        return members, others[0]
    found = ", ".join(map(repr, members)) if members else "no arrays"
    raise DataError(
        f"'{source}': expected the images under key 'arr_0' or as the only array; found {found}"
    )


def _labels_and_names(
    archive: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo], key: str, source: str
) -> tuple[np.ndarray | None, list[str] | None, str | None]:
    def read(name: str, check: _Check) -> np.ndarray:
        with archive.open(members[name]) as member:
            return read_npy(member, members[name].file_size, _where(source, name), check)

    label_key = "labels" if "labels" in members else None
    if label_key is None and key == "arr_0" and "arr_1" in members:
        label_key = "arr_1"
    labels = read(label_key, check_label_header) if label_key else None
    names = None
    if "class_names" in members:
        if labels is None:
            raise DataError(f"'{source}': 'class_names' without a 'labels' array")
        names = [str(s) for s in read("class_names", check_names_header)]
    return labels, names, label_key


class _ImageStream:
    """Where the image array of an ``.npz`` (or of a bare ``.npy`` under that name) lies."""

    def __init__(self, path: Path, source: str) -> None:
        self.path, self.source = path, source
        with open(path, "rb") as handle:
            self.bare = handle.read(len(_NPY_MAGIC)) == _NPY_MAGIC
            size = os.fstat(handle.fileno()).st_size
            if self.bare:
                handle.seek(0)
                self.key, self.where = "", f"'{source}'"
                self.header = read_npy_header(handle, size, self.where, check_image_header)
                self.labels, self.names, self.label_key = None, None, None
                st = os.fstat(handle.fileno())
                self.fingerprint = {
                    "size": st.st_size,
                    "mtime_ns": st.st_mtime_ns,
                    "inode": st.st_ino,
                }
                return
        with zipfile.ZipFile(path) as archive:
            members, self.key = _members(archive, source)
            self.where = _where(source, self.key)
            info = members[self.key]
            with archive.open(info) as member:
                self.header = read_npy_header(
                    member, info.file_size, self.where, check_image_header
                )
            self.labels, self.names, self.label_key = _labels_and_names(
                archive, members, self.key, source
            )
            # the archive's own CRC-32s identify the content, whatever the file times say
            self.fingerprint = {
                "members": sorted((k, v.CRC, v.file_size) for k, v in members.items())
            }
        if self.labels is not None and self.labels.shape[0] != self.header[0][0]:
            raise DataError(
                f"{_where(source, self.label_key)}: {self.labels.shape[0]} labels for "
                f"{self.header[0][0]} images"
            )

    def rows(self, count: int) -> Iterator[np.ndarray]:
        """The images as they are stored (``(n, H, W[, C])``), ``count`` at a time; only one
        part is in memory (unless the array is in Fortran order, which is read whole)."""
        with contextlib.ExitStack() as stack:
            if self.bare:
                fp = stack.enter_context(open(self.path, "rb"))
                stored = os.fstat(fp.fileno()).st_size
            else:
                archive = stack.enter_context(zipfile.ZipFile(self.path))
                info = _members(archive, self.source)[0][self.key]
                fp = stack.enter_context(archive.open(info))
                stored = info.file_size
            header = read_npy_header(fp, stored, self.where, check_image_header)
            if header != self.header:
                raise DataError(f"{self.where}: changed while it was read")
            if header[1]:  # Fortran order
                whole = _read_whole(fp, header, self.where)
                for start in range(0, len(whole), count):
                    yield whole[start : start + count]
                return
            yield from read_npy_rows(fp, header[0], self.where, count)


@contextlib.contextmanager
def _npz_errors(source: str) -> Iterator[None]:
    """The many exception kinds of zipfile, zlib, struct and numpy as one :class:`DataError`."""
    try:
        yield
    except DataError:
        raise
    except MemoryError:
        raise DataError(f"'{source}': not enough memory to load its images") from None
    except Exception as e:  # noqa: BLE001 - zipfile, zlib, struct and numpy raise many kinds
        raise DataError(f"cannot read '{source}' as a .npz file: {reason(e)}") from None


def _guarded(parts: Iterator[Part], source: str) -> Iterator[Part]:
    """``parts``, with errors raised while reading them translated by :func:`_npz_errors`."""
    with _npz_errors(source):
        yield from parts


def open_npz(path: Path, cfg: DataConfig, *, source: str, progress: bool) -> DecodedSource:
    """The images of a ``.npz`` archive, read, converted and resized part by part."""
    with _npz_errors(source):
        stream = _ImageStream(path, source)
    shape = stream.header[0]
    total = shape[0]
    labels = None
    if stream.labels is not None:
        labels = checked_labels(stream.labels, total, f"'{source}'").numpy()
    stored_bytes = max(1, int(np.prod(shape[1:])))
    rows = max(1, _ROWS_BYTES // max(stored_bytes, cfg.channels * cfg.image_size**2))

    def parts() -> Iterator[Part]:
        done = 0
        bar = tqdm(total=total, desc="reading", unit="img", disable=not progress, delay=1.0)
        with bar:
            for arr in stream.rows(rows):
                if arr.ndim == 3:
                    arr = arr[..., None]
                arr = convert_channels(arr, cfg.channels)
                arr = resize_square_float(arr, cfg.image_size, progress=False, desc="resizing")
                part_labels = None if labels is None else labels[done : done + len(arr)]
                done += len(arr)
                bar.update(len(arr))
                yield np.ascontiguousarray(arr.transpose(0, 3, 1, 2)), part_labels

    return DecodedSource(
        source=source,
        location=str(path.resolve()),
        kind="npz",
        channels=cfg.channels,
        image_size=cfg.image_size,
        parts=_guarded(parts(), source),
        total=total,
        class_names=stream.names,
        fingerprint={"file": str(path.resolve()), **stream.fingerprint},
        settings={"image_size": cfg.image_size, "channels": cfg.channels},
        labelled=labels is not None,
    )


def load_npz(path: Path, cfg: DataConfig, *, source: str, progress: bool) -> ImageDataset:
    """The images of a ``.npz`` archive decoded into memory."""
    return collect(open_npz(path, cfg, source=source, progress=progress))
