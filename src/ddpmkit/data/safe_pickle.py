"""The one place where ddpmkit unpickles: the python version of CIFAR-10/100, through an
allow-list.

:class:`RestrictedUnpickler` resolves only the globals that numpy's array pickles need
(:data:`ALLOWED_GLOBALS`), each replaced by a guarded stand-in; every other global (``os.system``,
``builtins.eval``, ``subprocess.Popen``...) and every persistent id is refused, so loading a
hostile file cannot run code. Plain containers (dict, list, tuple, str, bytes, numbers) are
pickle opcodes and need no global. The stand-ins also refuse what the CIFAR files never hold:
arrays reconstructed with a shape other than numpy's placeholder ``(0,)`` (no allocation is
sized by the file before the data is read), object and structured dtypes, and ``_codecs.encode``
with any codec but latin-1 (Python 3 writes bytes this way in protocol 2).
"""

from __future__ import annotations

import io
import pickle
import re
from typing import Any

import numpy as np

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct

from ddpmkit.errors import DataError

ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),  # pickles written by numpy 1.x (CIFAR's)
        ("numpy._core.multiarray", "_reconstruct"),  # pickles written by numpy 2.x
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes in protocol 2 pickles written by Python 3
    }
)
"""(module, name) pairs that :meth:`RestrictedUnpickler.find_class` resolves; nothing else."""

_SIMPLE_DTYPE = re.compile(r"[<>|=]?(?:[uif][1248]|b1)")


class _NdarrayToken:
    """Stands for ``numpy.ndarray`` as the first argument of ``_reconstruct``; never called."""

    def __repr__(self) -> str:
        return "numpy.ndarray"


_NDARRAY = _NdarrayToken()


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's ``_reconstruct(ndarray, (0,), b'b')``, and only that: the array pickle's empty
    placeholder, filled by ``__setstate__`` from the data stored in the file."""
    if subtype is not _NDARRAY or tuple(shape) != (0,) or dtype not in ("b", b"b"):
        raise pickle.UnpicklingError("unexpected arguments to numpy's _reconstruct")
    return _np_reconstruct(np.ndarray, (0,), b"b")


def _dtype(spec: Any, align: Any = False, copy: Any = True) -> np.dtype:
    """``numpy.dtype`` of a plain number type (no objects, records or sub-arrays)."""
    if isinstance(spec, bytes):
        spec = spec.decode("latin-1")
    if not isinstance(spec, str) or not _SIMPLE_DTYPE.fullmatch(spec):
        raise pickle.UnpicklingError(f"dtype {spec!r} is not a plain number type")
    return np.dtype(spec)


def _latin1_encode(text: Any, encoding: Any = "latin-1", errors: Any = "strict") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise pickle.UnpicklingError("_codecs.encode is allowed for latin-1 text only")
    return text.encode("latin-1")


_STAND_INS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _latin1_encode,
}
assert set(_STAND_INS) == ALLOWED_GLOBALS


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves :data:`ALLOWED_GLOBALS` (to guarded stand-ins) and nothing
    else. Strings of Python 2 pickles are decoded as latin-1, as numpy recommends."""

    def __init__(self, file: Any) -> None:
        super().__init__(file, encoding="latin1")

    def find_class(self, module: str, name: str) -> Any:
        stand_in = _STAND_INS.get((module, name))
        if stand_in is None:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")
        return stand_in

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed")


def loads(data: bytes, where: str) -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`; anything refused, truncated or
    malformed is one :class:`DataError` naming ``where``."""
    try:
        return RestrictedUnpickler(io.BytesIO(data)).load()
    except MemoryError:
        raise DataError(f"{where}: not enough memory to unpickle it") from None
    except RecursionError:
        raise DataError(f"{where}: refused: nested too deeply") from None
    except Exception as e:  # noqa: BLE001 - pickle, numpy and struct raise many kinds
        message = " ".join(str(e).split())[:120] or type(e).__name__
        raise DataError(f"{where}: refused or unreadable pickle: {message}") from None
