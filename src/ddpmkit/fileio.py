"""Crash-safe file writes (temporary file in the same folder, flush, fsync, atomic rename) and a
defensive safetensors reader (:func:`load_tensors`)."""

from __future__ import annotations

import json
import os
import stat
import struct
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ddpmkit.errors import CorruptFileError


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates files readable by their owner only; written files get the mode a plain open()
# would give them (0o666 minus the umask), so grids and weights stay readable by others
_FILE_MODE = 0o666 & ~_umask()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a flushed temporary file and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.chmod(tmp, _FILE_MODE)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_tensors(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]
) -> None:
    """safetensors.save_file through a temporary file and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        save_file(tensors, tmp, metadata=metadata)
        os.chmod(tmp, _FILE_MODE)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# safetensors dtype names accepted by load_tensors (float8/float4, unsigned 16..64-bit and
# complex types are refused: nothing in a run directory uses them)
SAFE_DTYPES = frozenset({"F16", "BF16", "F32", "F64", "I8", "I16", "I32", "I64", "U8", "BOOL"})
_HEADER_PREFIX = "Error while deserializing header: "
_MAX_HEADER = 100_000_000  # the safetensors library's own limit


def _corrupt(path: Path, what: str, problem: str) -> CorruptFileError:
    problem = " ".join(problem.split())  # always one line
    if len(problem) > 200:
        problem = problem[:197] + "..."
    return CorruptFileError(f"{what} file '{path}' {problem}")


def _check_layout(path: Path, what: str) -> None:
    """Size and header-length checks that give clearer messages than the library's."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise _corrupt(path, what, "not found") from None
    except OSError as e:
        raise _corrupt(path, what, f"cannot be read: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise _corrupt(path, what, "is not a regular file")
    if st.st_size == 0:
        raise _corrupt(path, what, "is empty (0 bytes)")
    if st.st_size < 8:
        raise _corrupt(path, what, f"is truncated: {st.st_size} bytes, too short for a header")
    try:
        with open(path, "rb") as handle:
            (header_len,) = struct.unpack("<Q", handle.read(8))
            if header_len > st.st_size - 8:
                raise _corrupt(
                    path,
                    what,
                    f"is truncated or not a safetensors file: its header declares {header_len} "
                    f"bytes but only {st.st_size - 8} follow",
                )
            if header_len > _MAX_HEADER:
                raise _corrupt(path, what, f"is corrupt: its header declares {header_len} bytes")
            header = handle.read(header_len)
    except OSError as e:
        raise _corrupt(path, what, f"cannot be read: {e.strerror or e}") from None
    needed = _data_end(header)
    stored = st.st_size - 8 - header_len
    if needed is not None and needed > stored:
        raise _corrupt(
            path, what, f"is truncated: its tensors need {needed} bytes but {stored} are stored"
        )
    if needed is not None and needed < stored:
        raise _corrupt(path, what, f"is corrupt: {stored - needed} stray bytes after its tensors")


def _data_end(header: bytes) -> int | None:
    """The largest end offset a safetensors header names, or None if it cannot tell."""
    try:
        entries = json.loads(header)
        ends = [
            int(entry["data_offsets"][1]) for key, entry in entries.items() if key != "__metadata__"
        ]
    except Exception:  # noqa: BLE001 - a malformed header is left to the safetensors parser
        return None
    return max(ends, default=0)


def load_tensors(
    path: Path, *, what: str = "weights"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file into CPU tensors and its metadata, checking everything.

    Raises :class:`CorruptFileError` (one line naming ``what``, the file and the problem) for a
    missing, empty, truncated or tampered file, a dtype outside :data:`SAFE_DTYPES`, or a
    floating tensor holding NaN or Inf.
    """
    path = Path(path)
    _check_layout(path, what)
    tensors: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            for name in handle.keys():
                dtype = handle.get_slice(name).get_dtype()
                if dtype not in SAFE_DTYPES:
                    raise _corrupt(
                        path,
                        what,
                        f"holds tensor '{name}' of unsupported dtype {dtype} "
                        f"(expected one of {', '.join(sorted(SAFE_DTYPES))})",
                    )
                tensors[name] = handle.get_tensor(name)
    except CorruptFileError:
        raise
    except MemoryError:
        raise _corrupt(path, what, "declares tensors too large to load") from None
    except Exception as e:  # noqa: BLE001 - SafetensorError, OSError, ValueError, ...: all corrupt
        message = str(e).removeprefix(_HEADER_PREFIX) or type(e).__name__
        raise _corrupt(path, what, f"is corrupt: {message}") from None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise _corrupt(path, what, "is corrupt: its metadata must map strings to strings")
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise _corrupt(path, what, f"is corrupt: tensor '{name}' contains NaN/Inf")
    return tensors, metadata
