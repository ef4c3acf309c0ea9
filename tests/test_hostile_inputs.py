"""Hostile inputs: every reader gives a correct result, a counted skip, or one clear DdpmkitError.

Image folders, single images, ``.npz`` arrays, TOML/JSON configs and safetensors files are fed
truncated, empty, corrupt and tampered files, odd modes, decompression bombs and symlink loops.
"""

from __future__ import annotations

import io
import json
import os
import struct
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from ddpmkit.cli import main
from ddpmkit.config import MAX_CONFIG_BYTES, config_from_dict, load_config_file, resolve_config
from ddpmkit.data import MAX_IMAGE_PIXELS, DataConfig, SkippedFilesWarning, load_dataset, load_image
from ddpmkit.errors import ConfigError, CorruptFileError, DataError, DdpmkitError, RunDirError
from ddpmkit.fileio import load_tensors


def _load(source: Path, *, size: int = 8, channels: int = 1):
    return load_dataset(
        DataConfig(source=str(source), image_size=size, channels=channels), progress=False
    )


def _load_one(path: Path, *, size: int = 8, channels: int = 3) -> np.ndarray:
    """The (C, H, W) uint8 image of a folder holding only ``path``; no warning allowed."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = _load(path.parent, size=size, channels=channels)
    assert len(ds) == 1
    return ds.images_uint8[0].numpy()


def _load_with_skips(root: Path, **kw) -> tuple[int, str]:
    """(images loaded, the one SkippedFilesWarning's text) for a folder with bad files."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = _load(root, **kw)
    skips = [w for w in caught if issubclass(w.category, SkippedFilesWarning)]
    others = [w for w in caught if not issubclass(w.category, SkippedFilesWarning)]
    assert len(skips) == 1, [str(w.message) for w in caught]
    assert not any(issubclass(w.category, Image.DecompressionBombWarning) for w in others)
    return len(ds), str(skips[0].message)


def _png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose valid IHDR declares ``width × height`` but whose data is a few bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    idat = zlib.compress(b"\x00" * 16)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _good_png(root: Path, name: str = "good.png", value: int = 7) -> None:
    root.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), value).save(root / name)


# --------------------------------------------------------------------------------------------
# image modes: pixel values against independent expectations


def test_16bit_png_scales_to_8_bits(tmp_path):
    arr = np.zeros((8, 8), dtype=np.uint16)
    arr[:, 2:4] = 65535
    arr[:, 4:6] = 257 * 128
    arr[:, 6:] = 1000  # 1000 / 257 = 3.89 -> 4
    path = tmp_path / "d" / "deep.png"
    path.parent.mkdir()
    Image.fromarray(arr).save(path)
    assert Image.open(path).mode.startswith("I")
    gray = _load_one(path, channels=1)[0]
    assert (gray[:, :2] == 0).all() and (gray[:, 2:4] == 255).all()
    assert (gray[:, 4:6] == 128).all() and (gray[:, 6:] == 4).all()
    rgb = _load_one(path, channels=3)
    assert (rgb[:, :, 2:4] == 255).all() and (rgb[:, :, 4:6] == 128).all()


def test_32bit_integer_tiff_scales_like_16_bits(tmp_path):
    arr = np.zeros((8, 8), dtype=np.int32)
    arr[:, 4:] = 65535
    path = tmp_path / "d" / "deep.tif"
    path.parent.mkdir()
    Image.fromarray(arr, mode="I").save(path)
    gray = _load_one(path, channels=1)[0]
    assert (gray[:, :4] == 0).all() and (gray[:, 4:] == 255).all()


def test_cmyk_jpeg_pure_cyan_is_rgb_cyan(tmp_path):
    path = tmp_path / "d" / "cyan.jpg"
    path.parent.mkdir()
    Image.new("CMYK", (16, 16), (255, 0, 0, 0)).save(path, quality=95)
    assert Image.open(path).mode == "CMYK"
    rgb = _load_one(path, size=16, channels=3).astype(int)
    assert np.abs(rgb[0]).max() <= 4  # red: none
    assert (rgb[1:] >= 251).all()  # green and blue: full
    # luma of (0, 255, 255): (255 * 38470 + 255 * 7471 + 0x8000) >> 16 = 179
    gray = _load_one(path, size=16, channels=1).astype(int)
    assert np.abs(gray - 179).max() <= 3


def test_palette_png_with_transparency_composites_on_white(tmp_path):
    img = Image.new("P", (8, 8), 0)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)  # 0: red, 1: blue
    img.paste(1, (0, 0, 4, 8))  # left half blue
    path = tmp_path / "d" / "pal.png"
    path.parent.mkdir()
    img.save(path, transparency=0)  # red is fully transparent
    assert Image.open(path).mode == "P" and "transparency" in Image.open(path).info
    rgb = _load_one(path, channels=3)
    assert (rgb[:, :, :4].transpose(1, 2, 0) == (0, 0, 255)).all()
    assert (rgb[:, :, 4:] == 255).all()  # transparent red -> white, not red


def test_la_and_rgba_alpha_composited_on_white(tmp_path):
    la = np.zeros((8, 8, 2), dtype=np.uint8)  # black
    la[:, :2, 1] = 0  # alpha 0 -> white
    la[:, 2:4, 1] = 255  # opaque black
    la[:, 4:, 1] = 128  # half: 255 * 127 / 255 = 127
    path = tmp_path / "la" / "la.png"
    path.parent.mkdir()
    Image.fromarray(la, mode="LA").save(path)
    gray = _load_one(path, channels=1)[0].astype(int)
    assert (gray[:, :2] == 255).all() and (gray[:, 2:4] == 0).all()
    assert np.abs(gray[:, 4:] - 127).max() <= 1

    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 128  # red at half opacity over white: (255, 127, 127)
    path = tmp_path / "rgba" / "rgba.png"
    path.parent.mkdir()
    Image.fromarray(rgba, mode="RGBA").save(path)
    rgb = _load_one(path, channels=3).astype(int)
    assert (rgb[0] == 255).all() and np.abs(rgb[1:] - 127).max() <= 1


# --------------------------------------------------------------------------------------------
# broken files: counted skips


def test_broken_files_are_counted_skips(tmp_path):
    root = tmp_path / "imgs"
    _good_png(root)
    png = _png_bytes(Image.effect_noise((64, 64), 40).convert("L"))
    (root / "trunc.png").write_bytes(png[: len(png) // 2])
    jpg = io.BytesIO()
    Image.effect_noise((64, 64), 40).convert("RGB").save(jpg, "JPEG")
    (root / "trunc.jpg").write_bytes(jpg.getvalue()[: len(jpg.getvalue()) // 2])
    (root / "empty.png").write_bytes(b"")
    (root / "noise.png").write_bytes(np.random.default_rng(0).bytes(2000))
    (root / "text.jpeg").write_text("not an image")
    n, msg = _load_with_skips(root)
    assert n == 1
    assert msg.startswith("skipped 5 unreadable image files of 6")


def test_decompression_bombs_are_refused_before_decoding(tmp_path):
    root = tmp_path / "bombs"
    _good_png(root)
    # over our limit, under Pillow's (89.5 Mpx): only our check stops it
    (root / "a_ours.png").write_bytes(_png_header_only(9000, 9000))
    # over Pillow's warning limit: the warning is an error here, never printed
    (root / "b_warn.png").write_bytes(_png_header_only(10000, 10000))
    # over twice Pillow's limit: DecompressionBombError
    (root / "c_error.png").write_bytes(_png_header_only(20000, 20000))
    before = Image.MAX_IMAGE_PIXELS
    n, msg = _load_with_skips(root)
    assert Image.MAX_IMAGE_PIXELS == before
    assert n == 1 and msg.startswith("skipped 3 unreadable image files of 4")
    assert f"9000x9000 pixels, more than the limit of {MAX_IMAGE_PIXELS}" in msg
    assert "10000x10000" in msg or "DecompressionBomb" in msg


def test_pixel_limit_applies_even_when_pillow_limit_is_off(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    loaded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: loaded.append(self))
    root = tmp_path / "bombs"
    root.mkdir()
    (root / "big.png").write_bytes(_png_header_only(20000, 20000))
    with pytest.raises(DataError, match="more than the limit"):
        _load(root)
    assert not loaded  # refused from the header, nothing decoded


def test_single_image_bomb_is_data_error(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(_png_header_only(10000, 10000))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataError, match="cannot read image"):
            load_image(path, 8)


def test_symlink_loops_and_special_files(tmp_path):
    root = tmp_path / "imgs"
    _good_png(root / "sub")
    (root / "sub" / "up").symlink_to(root, target_is_directory=True)  # a loop to the ancestor
    (root / "self.png").symlink_to(root / "self.png")  # a link to itself
    (root / "dangling.png").symlink_to(root / "missing.png")
    (root / "dir.png").mkdir()  # a folder with an image name is not a file
    os.mkfifo(root / "fifo.png")  # open() on a FIFO would block forever
    (root / "link.png").symlink_to(root / "sub" / "good.png")  # links to files are read
    n, msg = _load_with_skips(root)
    assert n == 2
    assert msg.startswith("skipped 3 unreadable image files of 5")
    assert "not a regular file" in msg


# --------------------------------------------------------------------------------------------
# the data source itself


def test_data_source_that_is_not_a_folder_or_npz(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="a file but not a .npz archive"):
        _load(tmp_path / "notes.txt")
    with pytest.raises(DataError, match="not found"):
        _load(tmp_path / "nowhere")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(DataError, match="broken symbolic link"):
        _load(tmp_path / "dangling")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(DataError, match="cannot access"):
        _load(tmp_path / "loop")
    os.mkfifo(tmp_path / "pipe.npz")
    with pytest.raises(DataError, match="not a file or a folder"):
        _load(tmp_path / "pipe.npz")
    with pytest.raises(ConfigError):
        DataConfig(source="a\x00b").validate()


def test_cli_reports_bad_data_source_in_one_line(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    rc = main(["train", "--data", str(notes), "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "not a .npz archive" in err


# --------------------------------------------------------------------------------------------
# .npz


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _npz_with_header(path: Path, shape: tuple[int, ...], data: bytes, dtype: str = "|u1") -> None:
    """An archive whose arr_0.npy header declares ``shape`` over ``data``."""
    header = f"{{'descr': '{dtype}', 'fortran_order': False, 'shape': {shape!r}, }}"
    header += " " * (-(len(header) + 11) % 64) + "\n"
    npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + data
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("arr_0.npy", npy)


@pytest.mark.parametrize(
    ("arr", "needle"),
    [
        (np.full((2, 8, 8, 3), 10.0, dtype=np.float32), "float32"),
        (np.full((2, 8, 8), np.nan, dtype=np.float64), "float64"),
        (np.zeros((2, 8, 8), dtype=np.int64), "int64"),
        (np.zeros((2, 8, 8), dtype=bool), "bool"),
        (np.zeros((2, 8, 8, 5), dtype=np.uint8), "wrong shape"),
        (np.zeros((1, 2, 8, 8, 1), dtype=np.uint8), "wrong shape"),
        (np.zeros((8,), dtype=np.uint8), "wrong shape"),
        (np.zeros((0, 8, 8, 3), dtype=np.uint8), "no images"),
        (np.zeros((3, 0, 0), dtype=np.uint8), "no images"),
    ],
)
def test_npz_wrong_arrays(tmp_path, arr, needle):
    np.savez(tmp_path / "bad.npz", arr)
    with pytest.raises(DataError, match="expected a uint8 array") as e:
        _load(tmp_path / "bad.npz")
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_npz_float_error_suggests_conversion(tmp_path):
    np.savez(tmp_path / "f.npz", np.zeros((2, 8, 8), np.float32))
    with pytest.raises(DataError, match=r"astype\(np.uint8\)"):
        _load(tmp_path / "f.npz")


def test_npz_object_array_is_never_unpickled(tmp_path):
    np.savez(tmp_path / "obj.npz", np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(DataError, match="Python objects"):
        _load(tmp_path / "obj.npz")


@pytest.mark.parametrize("kind", ["empty", "half", "text", "header_only"])
def test_npz_broken_files(tmp_path, kind):
    good = tmp_path / "good.npz"
    np.savez(good, np.zeros((4, 8, 8), np.uint8))
    raw = good.read_bytes()
    content = {
        "empty": b"",
        "half": raw[: len(raw) // 2],
        "text": b"not a zip file at all",
        "header_only": raw[:30],
    }[kind]
    (tmp_path / "bad.npz").write_bytes(content)
    with pytest.raises(DataError, match="bad.npz"):
        _load(tmp_path / "bad.npz")


def test_npz_crc_mismatch_is_data_error(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, np.full((4, 8, 8), 100, np.uint8))  # stored, not compressed
    raw = bytearray(path.read_bytes())
    at = raw.index(bytes([100] * 64))
    raw[at] = 101  # one pixel changed: the stored CRC no longer matches
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="CRC"):
        _load(path)


def test_npz_giant_declared_shape_is_refused_before_allocating(tmp_path):
    path = tmp_path / "giant.npz"
    _npz_with_header(path, (10**9, 1000, 1000, 3), b"\x00" * 192)
    with pytest.raises(DataError, match="truncated or tampered"):
        _load(path)
    # a huge count in a header whose images are also over the pixel limit
    _npz_with_header(path, (1, 10**5, 10**5), b"\x00" * 16)
    with pytest.raises(DataError, match="pixels are refused"):
        _load(path)
    # too little data for the declared shape
    _npz_with_header(path, (2, 8, 8), b"\x00" * 100)
    with pytest.raises(DataError, match="128 bytes"):
        _load(path)


def test_npz_larger_than_memory_is_refused_in_memory_and_cached_otherwise(tmp_path, monkeypatch):
    """4 images of 64 bytes "do not fit" in 100 bytes: decoding them into memory is refused
    before anything is read, with the hint; data.cache=auto decodes them onto disk instead."""
    import ddpmkit.data as data_module
    import ddpmkit.data.decoded as decoded_module

    arr = np.arange(256, dtype=np.uint8).reshape(4, 8, 8)
    np.savez(tmp_path / "x.npz", arr)
    for module in (decoded_module, data_module):
        monkeypatch.setattr(module, "physical_memory", lambda: 100)
    cfg = DataConfig(source=str(tmp_path / "x.npz"), image_size=8, channels=1, cache="off")
    with pytest.raises(DataError, match="do not fit.*data.cache=on"):
        load_dataset(cfg, progress=False)
    monkeypatch.setenv("DDPMKIT_CACHE", str(tmp_path / "cache"))
    cfg.cache = "auto"
    ds = load_dataset(cfg, progress=False)
    assert ds.cache_file is not None and np.array_equal(ds.images_uint8[:, 0].numpy(), arr)


def test_npz_fortran_order_and_bare_npy(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "f.npz", np.asfortranarray(arr))
    ds = _load(tmp_path / "f.npz", channels=3)
    assert np.array_equal(ds.images_uint8.permute(0, 2, 3, 1).numpy(), arr)
    (tmp_path / "bare.npz").write_bytes(_npy_bytes(arr))
    ds = _load(tmp_path / "bare.npz", channels=3)
    assert np.array_equal(ds.images_uint8.permute(0, 2, 3, 1).numpy(), arr)
    (tmp_path / "cut.npz").write_bytes(_npy_bytes(arr)[:-10])
    with pytest.raises(DataError, match="truncated"):
        _load(tmp_path / "cut.npz")


def test_npz_compressed_roundtrip(tmp_path):
    arr = np.random.default_rng(1).integers(0, 256, (3, 8, 8), dtype=np.uint8)
    np.savez_compressed(tmp_path / "c.npz", images=arr)
    ds = _load(tmp_path / "c.npz")
    assert np.array_equal(ds.images_uint8[:, 0].numpy(), arr)


# --------------------------------------------------------------------------------------------
# config files


def _config_error(tmp_path: Path, name: str, content: str | bytes) -> str:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(ConfigError) as e:
        resolve_config(path)
    message = str(e.value)
    assert "\n" not in message and len(message) < 400, message
    return message


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("bad.toml", "[train\nsteps = 3", "cannot parse"),
        ("bad.toml", b"[train]\nsteps = 3\n# \xff\xfe\n", "not valid UTF-8"),
        ("bad.json", b'{"train": {"steps": "\xc3("}}', "not valid UTF-8"),
        ("bad.toml", '[train]\nsteps = "ten"', "train.steps must be an integer"),
        ("bad.toml", "[train]\nsteps = 2.5", "train.steps must be an integer"),
        ("bad.toml", "[train]\nsteps = true", "train.steps must be an integer"),
        ("bad.toml", "[train]\nsteps = {a = 1}", "train.steps must be an integer"),
        ("bad.toml", "[train.steps]\na = 1", "train.steps must be an integer"),
        ("bad.toml", "[train]\nlr = [1, 2]", "train.lr must be a finite number"),
        ("bad.toml", "[train]\nlr = nan", "train.lr must be a finite number"),
        ("bad.toml", "[train]\nlr = inf", "train.lr must be a finite number"),
        ("bad.toml", "[train]\nsteps = 100000000000000000000", "too large"),
        ("bad.toml", "[model]\nchannel_mults = 3", "must be a list"),
        ("bad.toml", "[model]\nchannel_mults = [1, [2]]", "must be an integer"),
        ("bad.toml", "[train]\nnope = 1", "unknown key 'train.nope'"),
        ("bad.toml", "[nope]\na = 1", "unknown config section 'nope'"),
        ("bad.toml", "steps = 3", "unknown config section 'steps'"),
        ("bad.toml", "train = 3", "must be a table"),
        ("bad.toml", "a = " + "[" * 5000 + "]" * 5000, "cannot parse"),
        ("bad.json", "[1, 2]", "table of sections"),
        ("bad.json", '"train"', "table of sections"),
        ("bad.json", '{"train": {"lr": NaN}}', "finite"),
        ("bad.json", '{"train": {"lr": 1e999}}', "finite"),
        ("bad.json", '{"train": {"lr": ' + "9" * 400 + "}}", "finite"),
        ("bad.json", '{"train": {"steps": ' + "9" * 5000 + "}}", "cannot parse"),
        ("bad.json", "[" * 100000 + "]" * 100000, "cannot parse"),
        ("bad.json", '{"train": {"steps": 1', "cannot parse"),
        ("bad.json", "", "cannot parse"),
    ],
)
def test_bad_config_files(tmp_path, name, content, needle):
    assert needle in _config_error(tmp_path, name, content)


def test_config_paths(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config_file(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="is a folder"):
        load_config_file(tmp_path)
    big = tmp_path / "big.toml"
    big.write_text("# " + "x" * MAX_CONFIG_BYTES)
    with pytest.raises(ConfigError, match="at most"):
        load_config_file(big)


def test_config_dicts_of_the_wrong_shape():
    with pytest.raises(ConfigError, match="table of sections"):
        config_from_dict([1, 2])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="must be a table"):
        resolve_config(None, ["train.steps=3"], base={"train": 5})
    with pytest.raises(ConfigError, match="too large"):
        resolve_config(None, ["train.steps=" + "9" * 30])
    with pytest.raises(ConfigError, match="must be an integer"):
        resolve_config(None, ["train.steps=" + "9" * 5000])
    with pytest.raises(ConfigError, match="finite"):
        resolve_config(None, ["train.lr=1e999"])
    for override in ("diffusion.schedule=a\nb", "train.lr_schedule=a\nb", "a\nb=1", "x\ny"):
        with pytest.raises(ConfigError) as e:
            resolve_config(None, [override])
        assert "\n" not in str(e.value)
    long_value = "x" * 10_000
    with pytest.raises(ConfigError) as e:
        config_from_dict({"train": {"steps": long_value}})
    assert len(str(e.value)) < 200


def test_cli_reports_bad_config_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"[train]\nsteps = \xff\n")
    rc = main(["train", "--config", str(bad), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "UTF-8" in err


# --------------------------------------------------------------------------------------------
# safetensors


@pytest.fixture
def weights(tmp_path) -> Path:
    path = tmp_path / "model.safetensors"
    save_file(
        {"w": torch.linspace(-1, 1, 12).reshape(3, 4), "n": torch.arange(5)},
        str(path),
        metadata={"step": "7"},
    )
    return path


def _with_header(weights: Path, edit) -> bytes:
    raw = weights.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + raw[8 + n :]


def test_load_tensors_roundtrip(weights):
    tensors, metadata = load_tensors(weights)
    assert metadata == {"step": "7"}
    assert torch.equal(tensors["w"], torch.linspace(-1, 1, 12).reshape(3, 4))
    assert torch.equal(tensors["n"], torch.arange(5))
    assert issubclass(CorruptFileError, RunDirError) and issubclass(CorruptFileError, DdpmkitError)


def _dtype(name: str, shape: list[int]):
    def edit(header: dict) -> None:
        header["w"].update(dtype=name, shape=shape)

    return edit


def _offsets(header: dict) -> None:
    header["w"]["data_offsets"] = [0, 10**6]


def _overlap(header: dict) -> None:
    header["w"]["data_offsets"] = [0, 48]  # on top of tensor n


def _metadata(header: dict) -> None:
    header["__metadata__"] = {"step": 7}


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda w: b"", "is empty (0 bytes)"),
        (lambda w: w.read_bytes()[:5], "too short"),
        (lambda w: w.read_bytes()[:-7], "is truncated: its tensors need 88 bytes but 81"),
        (lambda w: struct.pack("<Q", 10**6) + w.read_bytes()[8:], "header declares 1000000"),
        (lambda w: struct.pack("<Q", 2**64 - 1) + w.read_bytes()[8:], "header declares"),
        (lambda w: w.read_bytes()[:8] + b"x" * 100 + w.read_bytes()[108:], "invalid JSON"),
        (lambda w: _with_header(w, _offsets), "tensors need 1000000 bytes"),
        (lambda w: _with_header(w, _overlap), "is corrupt"),
        (lambda w: w.read_bytes() + b"\x00" * 8, "8 stray bytes"),
        (lambda w: _with_header(w, _dtype("F8_E4M3", [3, 16])), "unsupported dtype F8_E4M3"),
        (lambda w: _with_header(w, _dtype("U16", [3, 8])), "unsupported dtype U16"),
        (lambda w: _with_header(w, _dtype("C64", [3, 2])), "unsupported dtype C64"),
        (lambda w: _with_header(w, _dtype("XX", [3, 4])), "is corrupt"),
        (lambda w: _with_header(w, _metadata), "is corrupt"),
        (lambda w: np.random.default_rng(0).bytes(300), "weights file"),
    ],
)
def test_load_tensors_corrupt_files(weights, make, needle):
    content = make(weights)
    bad = weights.with_name("bad.safetensors")
    bad.write_bytes(content)
    with pytest.raises(CorruptFileError) as e:
        load_tensors(bad)
    message = str(e.value)
    assert needle in message and "bad.safetensors" in message and "\n" not in message, message


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_load_tensors_non_finite(tmp_path, dtype, value):
    t = torch.zeros(4, dtype=dtype)
    t[2] = value
    path = tmp_path / "ema.safetensors"
    save_file({"layer.weight": t}, str(path))
    with pytest.raises(CorruptFileError, match=r"tensor 'layer.weight' contains NaN/Inf"):
        load_tensors(path, what="EMA weights")


def test_load_tensors_paths_and_dtypes(tmp_path):
    with pytest.raises(CorruptFileError, match="optimizer state file .* not found"):
        load_tensors(tmp_path / "missing.safetensors", what="optimizer state")
    with pytest.raises(CorruptFileError, match="not a regular file"):
        load_tensors(tmp_path)
    kinds = [torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool]
    tensors = {str(k): torch.ones(3, dtype=k) for k in kinds}
    save_file(tensors, str(tmp_path / "ints.safetensors"))
    loaded, metadata = load_tensors(tmp_path / "ints.safetensors")
    assert metadata == {} and all(torch.equal(loaded[k], v) for k, v in tensors.items())
