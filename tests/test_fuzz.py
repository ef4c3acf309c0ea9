"""Property-based fuzzing of every reader of untrusted files (needs ``hypothesis``).

Inputs are random bytes, or valid files mutated by bit flips, byte overwrites, insertions,
deletions, truncations at random offsets and "interesting" 32-bit integers (0, 2**31 - 1, ...)
written over size fields. Property: the reader returns a valid result (uint8 images of the asked
shape, a validated config, finite tensors) or raises a :class:`DdpmkitError` subclass; any other
exception, or a hang, fails the test.

Examples tried per property (2,900 in all, about 10 s on one core):

=========================  =====
image folder loader          400
npz reader (files)           400
npz reader (headers)         200
config TOML text             300
config JSON text             200
config dicts                 300
config overrides             200
safetensors (files)          400
safetensors (headers)        200
idx files (images, labels)   300
=========================  =====

``DDPMKIT_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz.py`` runs every property that many times
with a random seed; by default the seed is fixed, so the suite is deterministic.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save

from ddpmkit.config import RunConfig, config_from_dict, resolve_config
from ddpmkit.data import IMAGE_EXTENSIONS, DataConfig, load_dataset
from ddpmkit.errors import ConfigError, CorruptFileError, DataError
from ddpmkit.fileio import load_tensors

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

pytestmark = pytest.mark.slow  # multi-process, kill or fuzz runs: seconds each

_OVERRIDE = int(os.environ.get("DDPMKIT_FUZZ_EXAMPLES", "0"))
_ROOT = Path(__file__).resolve().parent.parent


def _settings(examples: int) -> settings:
    return settings(
        max_examples=_OVERRIDE or examples,
        deadline=None,
        database=None,
        derandomize=not _OVERRIDE,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
    )


# --------------------------------------------------------------------------------------------
# mutations

_INTERESTING = [0, 1, 0x7F, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]
_OPS = ["flip", "byte", "insert", "delete", "truncate", "int32"]


@st.composite
def _mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """Random bytes (1 in 10), or one of ``seeds`` with 0..6 random mutations (mostly 1 or 2)."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=1024))
    data = bytearray(draw(st.sampled_from(seeds)))
    count = draw(st.sampled_from([0, 1, 1, 1, 2, 2, 3, 6]))
    for _ in range(count):
        if not data:
            break
        op = draw(st.sampled_from(_OPS))
        pos = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte":
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=32))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 32))]
        elif op == "truncate":
            del data[pos:]
        else:
            order = draw(st.sampled_from(["<I", ">I"]))
            data[pos : pos + 4] = struct.pack(order, draw(st.sampled_from(_INTERESTING)))
    return bytes(data)


# --------------------------------------------------------------------------------------------
# image folders


def _image_seeds() -> list[bytes]:
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (12, 10), dtype=np.uint8)
    rgb = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    rgba = rng.integers(0, 256, (9, 9, 4), dtype=np.uint8)
    deep = rng.integers(0, 65536, (8, 8), dtype=np.uint16)
    palette = Image.fromarray(gray).convert("P")
    images: list[tuple[Image.Image, str, dict[str, Any]]] = [
        (Image.fromarray(gray), "PNG", {}),
        (Image.fromarray(rgba, mode="RGBA"), "PNG", {}),
        (palette, "PNG", {"transparency": 3}),
        (Image.fromarray(deep), "PNG", {}),
        (Image.fromarray(rgb), "JPEG", {"quality": 90}),
        (Image.fromarray(rgb).convert("CMYK"), "JPEG", {}),
        (Image.fromarray(rgb), "BMP", {}),
        (Image.fromarray(rgba, mode="RGBA"), "WEBP", {"lossless": True}),
        (Image.fromarray(deep), "TIFF", {}),
        (Image.fromarray(rgb), "TIFF", {"compression": "tiff_deflate"}),
    ]
    seeds = []
    for img, fmt, kw in images:
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        seeds.append(buf.getvalue())
    return seeds


_IMAGE_SEEDS = _image_seeds()


@_settings(400)
@given(
    content=_mutated(_IMAGE_SEEDS),
    ext=st.sampled_from(IMAGE_EXTENSIONS),
    channels=st.sampled_from([1, 3]),
)
def test_fuzz_image_folder(tmp_path: Path, content: bytes, ext: str, channels: int) -> None:
    root = tmp_path / "imgs"
    root.mkdir(exist_ok=True)
    for old in root.iterdir():
        old.unlink()
    (root / f"x{ext}").write_bytes(content)
    cfg = DataConfig(source=str(root), image_size=8, channels=channels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's own warnings (EXIF...) are not the point
        try:
            ds = load_dataset(cfg, progress=False)
        except DataError as err:
            assert "\n" not in str(err)
            event("refused")
            return
    event("decoded")
    assert ds.images_uint8.dtype == torch.uint8
    assert tuple(ds.images_uint8.shape) == (1, channels, 8, 8)


# --------------------------------------------------------------------------------------------
# .npz


def _npz_seeds() -> list[bytes]:
    rng = np.random.default_rng(1)
    arrays = [
        rng.integers(0, 256, (3, 8, 8), dtype=np.uint8),
        rng.integers(0, 256, (2, 6, 6, 3), dtype=np.uint8),
        rng.integers(0, 256, (2, 4, 4, 4), dtype=np.uint8),
    ]
    seeds = []
    for i, arr in enumerate(arrays):
        for save_npz in (np.savez, np.savez_compressed):
            buf = io.BytesIO()
            save_npz(buf, np.asfortranarray(arr) if i == 1 else arr)
            seeds.append(buf.getvalue())
    buf = io.BytesIO()
    np.save(buf, arrays[0])  # a bare .npy under a .npz name
    seeds.append(buf.getvalue())
    return seeds


_NPZ_SEEDS = _npz_seeds()


def _check_npz(path: Path, channels: int) -> None:
    cfg = DataConfig(source=str(path), image_size=8, channels=channels)
    try:
        ds = load_dataset(cfg, progress=False)
    except DataError as err:
        assert "\n" not in str(err)
        event("refused")
        return
    event("loaded")
    assert ds.images_uint8.dtype == torch.uint8 and len(ds) >= 1
    assert tuple(ds.images_uint8.shape[1:]) == (channels, 8, 8)


@_settings(400)
@given(content=_mutated(_NPZ_SEEDS), channels=st.sampled_from([1, 3]))
def test_fuzz_npz_files(tmp_path: Path, content: bytes, channels: int) -> None:
    path = tmp_path / "x.npz"
    path.write_bytes(content)
    _check_npz(path, channels)


def _idx_seeds() -> list[bytes]:
    from idx_files import idx_bytes

    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (5, 6, 6), dtype=np.uint8)
    return [idx_bytes(images), gzip.compress(idx_bytes(images))]


_IDX_SEEDS = _idx_seeds()


@_settings(300)
@given(
    content=_mutated(_IDX_SEEDS),
    labels=st.one_of(st.none(), _mutated([bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2, 3, 4, 9])])),
)
def test_fuzz_idx_files(tmp_path: Path, content: bytes, labels: bytes | None) -> None:
    """Mutated idx images (plain and gzipped) and labels: loaded as checked, or one line."""
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(content)
    label_file = tmp_path / "train-labels-idx1-ubyte"
    if labels is not None:
        label_file.write_bytes(labels)
    elif label_file.exists():
        label_file.unlink()
    cfg = DataConfig(source=str(tmp_path), image_size=6, cache="off")
    try:
        ds = load_dataset(cfg, progress=False)
    except DataError as err:
        assert "\n" not in str(err)
        event("refused")
        return
    event("loaded")
    assert ds.images_uint8.dtype == torch.uint8 and tuple(ds.images_uint8.shape[1:]) == (1, 6, 6)
    if ds.labels is not None:
        assert len(ds.labels) == len(ds)


_DIMS = st.one_of(st.integers(0, 16), st.integers(0, 2**62), st.sampled_from([-1, 8]))


@_settings(200)
@given(
    shape=st.lists(_DIMS, max_size=6),
    descr=st.sampled_from(["|u1", "u1", "<f4", "<f8", "|b1", "<i8", ">u2", "|O", "<U3", "|V4"]),
    fortran=st.booleans(),
    data_len=st.one_of(st.none(), st.integers(0, 2048)),
    compressed=st.booleans(),
)
def test_fuzz_npz_headers(
    tmp_path: Path,
    shape: list[int],
    descr: str,
    fortran: bool,
    data_len: int | None,
    compressed: bool,
) -> None:
    if data_len is None:  # as many bytes as the shape declares, where that is small
        data_len = min(abs(math.prod(shape)), 4096)
    header = f"{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {tuple(shape)!r}, }}"
    header += " " * (-(len(header) + 11) % 64) + "\n"
    npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode()
    npy += bytes(range(256)) * (data_len // 256) + bytes(data_len % 256)
    path = tmp_path / "h.npz"
    method = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=method) as zf:
        zf.writestr("arr_0.npy", npy)
    _check_npz(path, 3)


# --------------------------------------------------------------------------------------------
# configs


def _check_config(run: Any) -> None:
    try:
        config = run()
    except ConfigError as err:
        assert "\n" not in str(err)
        event("refused")
        return
    event("valid")
    assert isinstance(config, RunConfig)
    config.validate()
    assert config_from_dict(json.loads(config.to_json())) == config


_TOML_SEEDS = [p.read_bytes() for p in sorted((_ROOT / "configs").glob("*.toml"))] or [
    b'[train]\nsteps = 10\n[model]\nchannel_mults = [1, 2]\nattention = ["none", "none"]\n'
]
_JSON_SEEDS = [RunConfig().to_json().encode(), b'{"train": {"steps": 5, "lr": 0.001}}']


@_settings(300)
@given(content=st.one_of(_mutated(_TOML_SEEDS), st.text(max_size=300).map(str.encode)))
def test_fuzz_config_toml(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "c.toml"
    path.write_bytes(content)
    _check_config(lambda: resolve_config(path))


@_settings(200)
@given(content=st.one_of(_mutated(_JSON_SEEDS), st.text(max_size=300).map(str.encode)))
def test_fuzz_config_json(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "c.json"
    path.write_bytes(content)
    _check_config(lambda: resolve_config(path))


_FIELDS = {section: list(RunConfig().to_dict()[section]) for section in RunConfig().to_dict()}
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 5000),
    st.integers(),
    st.sampled_from([2**63, -(2**63), 10**400]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["none", "full", "linear", "cosine", "ddim", "eps", "l2", "1,2", "auto"]),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def _config_dicts(draw: st.DrawFn) -> dict[str, Any]:
    d: dict[str, Any] = {}
    for section in draw(st.lists(st.sampled_from([*_FIELDS, "extra"]), max_size=4, unique=True)):
        if draw(st.integers(0, 9)) == 0:
            d[section] = draw(_SCALARS)
            continue
        keys = _FIELDS.get(section, ["x"]) + ["unknown_key"]
        chosen = draw(st.lists(st.sampled_from(keys), max_size=4, unique=True))
        d[section] = {k: draw(_VALUES) for k in chosen}
    return d


@_settings(300)
@given(d=_config_dicts())
def test_fuzz_config_dicts(d: dict[str, Any]) -> None:
    _check_config(lambda: config_from_dict(d))


@_settings(200)
@given(
    key=st.sampled_from([f"{s}.{k}" for s, keys in _FIELDS.items() for k in keys] + ["steps"]),
    value=st.one_of(
        st.text(max_size=20),
        st.integers().map(str),
        st.floats().map(repr),
        st.sampled_from(["9" * 5000, "1e999", "nan", "-inf", "1,,2", "none", "true"]),
    ),
)
def test_fuzz_config_overrides(key: str, value: str) -> None:
    _check_config(lambda: resolve_config(None, [f"{key}={value}"]))


# --------------------------------------------------------------------------------------------
# safetensors


def _tensor_seeds() -> list[bytes]:
    gen = torch.Generator().manual_seed(0)
    groups = [
        {"w": torch.randn(3, 4, generator=gen), "b": torch.zeros(4)},
        {"h": torch.randn(5, generator=gen).to(torch.float16), "i": torch.arange(6)},
        {
            "bf": torch.randn(2, 2, generator=gen).to(torch.bfloat16),
            "u": torch.arange(8, dtype=torch.uint8),
            "m": torch.tensor([True, False]),
            "d": torch.randn(3, generator=gen).double(),
        },
    ]
    return [save(t, metadata={"step": str(i), "note": "seed"}) for i, t in enumerate(groups)]


_TENSOR_SEEDS = _tensor_seeds()


def _check_tensors(path: Path) -> None:
    try:
        tensors, metadata = load_tensors(path, what="fuzz")
    except CorruptFileError as err:
        assert "\n" not in str(err) and "fuzz file" in str(err)
        event("refused")
        return
    event("loaded")
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    for tensor in tensors.values():
        assert isinstance(tensor, torch.Tensor)
        if tensor.is_floating_point():
            assert bool(torch.isfinite(tensor).all())


@_settings(400)
@given(content=_mutated(_TENSOR_SEEDS))
def test_fuzz_safetensors_files(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "w.safetensors"
    path.write_bytes(content)
    _check_tensors(path)


_ST_DTYPES = ["F32", "F16", "BF16", "F64", "I64", "I8", "U8", "BOOL", "U16", "F8_E4M3", "C64", "X"]


@_settings(200)
@given(
    entries=st.lists(
        st.tuples(
            st.text(max_size=6),
            st.sampled_from(_ST_DTYPES),
            st.lists(st.one_of(st.integers(0, 8), st.integers(0, 2**64)), max_size=4),
            st.tuples(st.integers(0, 300), st.integers(0, 300)),
        ),
        max_size=4,
    ),
    metadata=st.one_of(
        st.none(), st.dictionaries(st.text(max_size=4), st.one_of(st.text(max_size=4), st.none()))
    ),
    data=st.binary(max_size=300),
)
def test_fuzz_safetensors_headers(
    tmp_path: Path,
    entries: list[tuple[str, str, list[int], tuple[int, int]]],
    metadata: dict[str, Any] | None,
    data: bytes,
) -> None:
    header: dict[str, Any] = {
        name: {"dtype": dtype, "shape": shape, "data_offsets": list(offsets)}
        for name, dtype, shape, offsets in entries
    }
    if metadata is not None:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    path = tmp_path / "h.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    _check_tensors(path)
