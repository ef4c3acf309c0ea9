"""Tests of ddpmkit.data: digits, image folders, .npz arrays, flips and uint8 scaling."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ddpmkit
from ddpmkit.data import (
    DataConfig,
    ImageDataset,
    SkippedFilesWarning,
    from_uint8,
    load_dataset,
    random_hflip,
    to_uint8,
)
from ddpmkit.errors import ConfigError, DataError


def _load(source, **kw) -> ImageDataset:
    return load_dataset(DataConfig(source=str(source), **kw), progress=False)


def _luma(rgb) -> int:
    """Pillow's "L" conversion of one RGB triple."""
    return int(np.asarray(Image.new("RGB", (1, 1), tuple(rgb)).convert("L"))[0, 0])


# --------------------------------------------------------------------------------------------
# config


def test_config_defaults_roundtrip_json():
    cfg = DataConfig()
    cfg.validate()
    d = json.loads(json.dumps(asdict(cfg)))
    assert DataConfig(**d) == cfg
    assert DataConfig.from_dict(cfg.to_dict()) == cfg
    assert DataConfig(source=Path("some/dir")).source == str(Path("some/dir"))


@pytest.mark.parametrize(
    "kw",
    [
        {"image_size": 3},
        {"image_size": 2048},
        {"image_size": 16.0},
        {"image_size": True},
        {"channels": 2},
        {"channels": True},
        {"random_flip": "yes"},
        {"source": ""},
        {"source": 3},
    ],
)
def test_config_rejects_bad_values(kw):
    with pytest.raises(ConfigError):
        DataConfig(**kw).validate()
    with pytest.raises(ConfigError):
        load_dataset(DataConfig(**kw), progress=False)


def test_config_from_dict_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="imagesize"):
        DataConfig.from_dict({"imagesize": 16})


def test_missing_source_is_data_error(tmp_path):
    with pytest.raises(
        DataError, match="not found: give 'digits', 'fashion-mnist', an image folder, or a .npz"
    ):
        _load(tmp_path / "nope")
    with pytest.raises(DataError, match="not found"):
        _load("digitz")
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(DataError, match="not a .npz"):
        _load(other)


@pytest.mark.slow
def test_import_is_light():
    src = str(Path(ddpmkit.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    code = "import sys, ddpmkit, ddpmkit.data; assert 'sklearn' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


# --------------------------------------------------------------------------------------------
# digits


@pytest.fixture(scope="module")
def digits16() -> ImageDataset:
    return _load("digits")


def test_digits_default(digits16):
    ds = digits16
    assert len(ds) == 1797
    assert ds.images_uint8.shape == (1797, 1, 16, 16)
    assert ds.images_uint8.dtype == torch.uint8
    x = ds[5]
    assert x.shape == (1, 16, 16) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert torch.equal(x, ds.images_uint8[5].float() / 127.5 - 1)
    assert ds.labels.dtype == torch.long and ds.labels.shape == (1797,)
    assert set(ds.labels.tolist()) == set(range(10))
    assert "1797" in ds.describe() and "16x16" in ds.describe() and "digits" in ds.describe()
    # strokes stay bright and the background black after bicubic upscaling with clipping
    assert int(ds.images_uint8.max()) == 255 and int(ds.images_uint8.min()) == 0


def test_digits_native_size_is_the_raw_mapping():
    from sklearn.datasets import load_digits

    raw = load_digits()
    ds = _load("digits", image_size=8)
    expected = np.rint(raw.images * 255 / 16).astype(np.uint8)
    assert np.array_equal(ds.images_uint8[:, 0].numpy(), expected)
    assert np.array_equal(ds.labels.numpy(), raw.target)


def test_digits_rgb_replicates_gray(digits16):
    ds = _load("digits", channels=3)
    assert ds.images_uint8.shape == (1797, 3, 16, 16)
    for c in range(3):
        assert torch.equal(ds.images_uint8[:, c], digits16.images_uint8[:, 0])


# --------------------------------------------------------------------------------------------
# image folders


def _save(path: Path, img: Image.Image, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


@pytest.fixture
def folder(tmp_path) -> Path:
    """A mixed image folder; every readable image is a solid color except the wide one."""
    root = tmp_path / "imgs"
    _save(root / "a" / "b" / "red.PNG", Image.new("RGB", (20, 20), (255, 0, 0)))
    _save(root / "a" / "gray.jpeg", Image.new("L", (16, 16), 100), quality=100)
    _save(root / "c" / "blue.Tif", Image.new("RGB", (32, 32), (0, 0, 255)))
    _save(root / "green.BMP", Image.new("RGB", (16, 16), (0, 255, 0)))
    _save(root / "d" / "x.webp", Image.new("RGB", (16, 16), (10, 20, 30)), lossless=True)
    rgba = Image.new("RGBA", (16, 16), (255, 0, 0, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 8, 16))  # left half fully transparent black
    _save(root / "rgba.png", rgba)
    pal = Image.new("P", (16, 16), 1)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)  # index 0 black, index 1 green
    pal.paste(0, (0, 0, 16, 8))  # top half index 0, which is transparent
    _save(root / "pal.png", pal, transparency=0)
    wide = Image.new("RGB", (48, 16), (0, 0, 0))
    wide.paste((255, 255, 255), (16, 0, 32, 16))  # exactly the center square is white
    _save(root / "wide.png", wide)
    (root / "corrupt.png").write_bytes(b"this is not a png")
    (root / "notes.txt").write_text("not an image, not counted")
    (root / ".hidden.png").write_bytes(b"AppleDouble junk, skipped")
    return root


def test_folder_rgb(folder):
    with pytest.warns(SkippedFilesWarning) as rec:
        ds = _load(folder, image_size=16, channels=3)
    assert len(rec) == 1
    msg = str(rec[0].message)
    assert "skipped 1 unreadable image file " in msg and "corrupt.png" in msg
    assert ".hidden" not in msg and "notes" not in msg
    assert ds.images_uint8.shape == (8, 3, 16, 16)
    assert ds.labels is None and "image folder" in ds.describe()
    # sorted relative paths: a/b/red.PNG, a/gray.jpeg, c/blue.Tif, d/x.webp, green.BMP, pal.png,
    # rgba.png, wide.png
    im = ds.images_uint8.permute(0, 2, 3, 1).numpy().astype(int)  # N, H, W, C
    assert (im[0] == (255, 0, 0)).all()
    gray = im[1]
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    assert np.abs(gray - 100).max() <= 1  # JPEG at quality 100
    assert (im[2] == (0, 0, 255)).all()  # 32 -> 16 Lanczos of a constant stays exact
    assert (im[3] == (10, 20, 30)).all()
    assert (im[4] == (0, 255, 0)).all()
    assert (im[5][:8] == 255).all() and (im[5][8:] == (0, 255, 0)).all()  # palette, on white
    assert (im[6][:, :8] == 255).all() and (im[6][:, 8:] == (255, 0, 0)).all()  # RGBA, on white
    assert (im[7] == 255).all()  # the center square of the wide image


def test_folder_grayscale(folder):
    with pytest.warns(SkippedFilesWarning):
        ds = _load(folder, image_size=16, channels=1)
    assert ds.images_uint8.shape == (8, 1, 16, 16)
    im = ds.images_uint8[:, 0].numpy().astype(int)
    assert (im[0] == _luma((255, 0, 0))).all()
    assert (im[2] == _luma((0, 0, 255))).all()
    assert (im[6][:, :8] == 255).all() and (im[6][:, 8:] == _luma((255, 0, 0))).all()


def test_folder_resized_center_crop(tmp_path):
    # 96x32 with white columns 24..71: the 32x32 center square (32..63) is white with an
    # 8-pixel margin, more than the 6-pixel support of Lanczos at a 2x downscale.
    wide = Image.new("L", (96, 32), 0)
    wide.paste(255, (24, 0, 72, 32))
    _save(tmp_path / "w" / "wide.png", wide)
    tall = Image.new("L", (20, 60), 0)
    tall.paste(255, (0, 14, 20, 46))  # center square (rows 20..39) white with a 6-row margin
    _save(tmp_path / "w" / "tall.png", tall)
    ds = _load(tmp_path / "w", image_size=16)
    assert ds.images_uint8.shape == (2, 1, 16, 16)
    assert (ds.images_uint8 == 255).all()
    ds = _load(tmp_path / "w", image_size=32)  # tall.png upscaled 20 -> 32, wide.png cropped
    assert (ds.images_uint8 == 255).all()
    ds = _load(tmp_path / "w", image_size=30)  # tall up 20 -> 30, wide down 32 -> 30
    assert (ds.images_uint8 == 255).all()


def test_folder_is_deterministic(folder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedFilesWarning)
        a = _load(folder, image_size=8, channels=3)
        b = _load(folder, image_size=8, channels=3)
    assert torch.equal(a.images_uint8, b.images_uint8)


def test_folder_warning_names_at_most_three(tmp_path):
    root = tmp_path / "many"
    _save(root / "ok.png", Image.new("L", (8, 8), 7))
    for i in range(5):
        (root / f"bad{i}.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.warns(SkippedFilesWarning, match="skipped 5 unreadable image files") as rec:
        ds = _load(root, image_size=8)
    assert len(rec) == 1
    msg = str(rec[0].message)
    assert "bad0.jpg" in msg and "bad2.jpg" in msg and "bad3.jpg" not in msg
    assert "and 2 more" in msg
    assert len(ds) == 1 and (ds.images_uint8 == 7).all()


def test_folder_16bit_grayscale(tmp_path):
    arr = np.full((8, 8), 65535, dtype=np.uint16)
    arr[:, :4] = 257 * 10
    _save(tmp_path / "d" / "deep.png", Image.fromarray(arr))
    ds = _load(tmp_path / "d", image_size=8)
    assert (ds.images_uint8[0, 0, :, :4] == 10).all() and (
        ds.images_uint8[0, 0, :, 4:] == 255
    ).all()


def test_empty_folder_is_data_error(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="no image files found") as e:
        _load(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(e.value) and ".png" in str(e.value)


def test_folder_of_corrupt_files_is_data_error(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "a.png").write_bytes(b"garbage")
    (root / "b.JPG").write_bytes(b"")
    with pytest.raises(DataError, match="none of the 2 image files") as e:
        _load(root)
    assert "a.png" in str(e.value)


# --------------------------------------------------------------------------------------------
# .npz


def test_npz_nhwc_roundtrip_exact(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (5, 12, 12, 3), dtype=np.uint8)
    np.savez(tmp_path / "x.npz", arr)
    ds = _load(tmp_path / "x.npz", image_size=12, channels=3)
    assert ds.images_uint8.dtype == torch.uint8
    assert np.array_equal(ds.images_uint8.permute(0, 2, 3, 1).numpy(), arr)
    assert torch.equal(to_uint8(torch.stack([ds[i] for i in range(len(ds))])), ds.images_uint8)
    assert "npz" in ds.describe() and "5 images" in ds.describe()
    # RGB -> grayscale matches Pillow's conversion bit for bit
    gray = _load(tmp_path / "x.npz", image_size=12, channels=1)
    ref = np.stack([np.asarray(Image.fromarray(a).convert("L")) for a in arr])
    assert np.array_equal(gray.images_uint8[:, 0].numpy(), ref)


def test_npz_grayscale_nhw_and_other_key(tmp_path):
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, (4, 10, 10), dtype=np.uint8)
    np.savez(tmp_path / "g.npz", images=arr)  # the only key, not arr_0
    ds = _load(tmp_path / "g.npz", image_size=10, channels=1)
    assert np.array_equal(ds.images_uint8[:, 0].numpy(), arr)
    rgb = _load(tmp_path / "g.npz", image_size=10, channels=3)
    for c in range(3):
        assert np.array_equal(rgb.images_uint8[:, c].numpy(), arr)


def test_npz_resized(tmp_path):
    arr = np.full((3, 32, 32, 1), 77, dtype=np.uint8)
    arr[1] = 200
    np.savez(tmp_path / "r.npz", arr_0=arr)
    down = _load(tmp_path / "r.npz", image_size=16)
    up = _load(tmp_path / "r.npz", image_size=48)
    assert down.images_uint8.shape == (3, 1, 16, 16) and up.images_uint8.shape == (3, 1, 48, 48)
    for ds in (down, up):
        assert (ds.images_uint8[0] == 77).all() and (ds.images_uint8[1] == 200).all()


@pytest.mark.parametrize(
    ("arr", "needle"),
    [
        (np.zeros((2, 8, 8, 3), dtype=np.float32), "float32"),
        (np.zeros((2, 8, 8, 2), dtype=np.uint8), "(2, 8, 8, 2)"),
        (np.zeros((2, 8, 6, 3), dtype=np.uint8), "not square"),
        (np.zeros((8, 8), dtype=np.uint8), "(8, 8)"),
        (np.zeros((0, 8, 8), dtype=np.uint8), "no images"),
    ],
)
def test_npz_bad_arrays(tmp_path, arr, needle):
    np.savez(tmp_path / "bad.npz", arr)
    with pytest.raises(DataError) as e:
        _load(tmp_path / "bad.npz")
    assert needle in str(e.value)


def test_npz_bad_files(tmp_path):
    np.savez(tmp_path / "two.npz", a=np.zeros((1, 8, 8), np.uint8), b=np.zeros(3, np.uint8))
    with pytest.raises(DataError, match="'a', 'b'"):
        _load(tmp_path / "two.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(DataError, match="cannot read"):
        _load(tmp_path / "junk.npz")
    np.savez(tmp_path / "obj.npz", np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError):
        _load(tmp_path / "obj.npz")


# --------------------------------------------------------------------------------------------
# flips and scaling


def test_random_hflip():
    batch = torch.arange(1000 * 2 * 3 * 5, dtype=torch.float32).reshape(1000, 2, 3, 5)
    a = random_hflip(batch, torch.Generator().manual_seed(0))
    b = random_hflip(batch, torch.Generator().manual_seed(0))
    c = random_hflip(batch, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    flipped = (a == batch.flip(-1)).flatten(1).all(1)
    kept = (a == batch).flatten(1).all(1)
    assert bool((flipped ^ kept).all())  # every image is either flipped or untouched
    assert 430 <= int(flipped.sum()) <= 570
    assert random_hflip(batch, None).shape == batch.shape
    with pytest.raises(ValueError):
        random_hflip(batch[0], None)


def test_to_uint8_inverts_scaling_exactly():
    levels = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    x = from_uint8(levels)
    assert x.dtype == torch.float32 and x.min() == -1 and x.max() == 1
    assert torch.equal(to_uint8(x), levels)
    assert torch.equal(to_uint8(levels.float() / 127.5 - 1), levels)
    assert torch.equal(to_uint8(x.double()), levels)
    odd = torch.tensor([-3.0, -1.0, 0.0, 1.0, 7.0, float("nan")])
    assert to_uint8(odd).tolist() == [0, 0, 128, 255, 255, 0]


# --------------------------------------------------------------------------------------------
# the shipped configs


_CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.toml"))


@pytest.mark.parametrize("path", _CONFIGS, ids=lambda p: p.relative_to(p.parents[1]).as_posix())
def test_every_config_loads_its_data_and_builds_its_model(tmp_path, path):
    """Each config, its data source replaced by a local .npz of the right size, validates, loads
    the data and builds its U-Net; a "Cost: xM parameters" comment matches the model."""
    import re

    from ddpmkit.config import resolve_config
    from ddpmkit.nn import UNet

    config = resolve_config(path, [f"data.source={tmp_path / 'x.npz'}"])
    size, channels = config.data.image_size, config.data.channels
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "x.npz", rng.integers(0, 256, (3, size, size, channels), dtype=np.uint8))
    ds = load_dataset(config.data, progress=False)
    assert ds.images_uint8.shape == (3, channels, size, size)
    model = UNet(config.model)
    stated = re.search(r"Cost: ([\d.]+)M parameters", path.read_text())
    if stated:
        assert f"{model.num_parameters() / 1e6:.1f}" == stated.group(1)
    if sum(p.numel() for p in model.parameters()) < 10_000_000:  # forward the small ones
        with torch.no_grad():
            out = model(from_uint8(ds.images_uint8[:1]), torch.zeros(1, dtype=torch.long))
        assert out.shape[-3:] == (config.model.out_channels, size, size)
