"""Feature extractors: the shipped digits CNN and the torch-fidelity Inception adapter.

The Inception tests run against a fake ``torch_fidelity`` module put in ``sys.modules``: the real
package (and its weights, ~100 MB) are not installed here. The fake records how it is built and
returns features that depend on the pixels, so the adapter's plumbing is checked end to end.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ddpmkit.data import DataConfig, load_dataset
from ddpmkit.errors import ConfigError
from ddpmkit.metrics.digits_cnn import DigitsCNN, held_out_split
from ddpmkit.metrics.extractors import (
    DIGITS_WEIGHTS_PATH,
    EXTRACTORS,
    INCEPTION_WEIGHTS_FILE,
    INCEPTION_WEIGHTS_URL,
    FeatureExtractor,
    extract_features,
    load_extractor,
)

HEX16 = re.compile(r"^[0-9a-f]{16}$")


@pytest.fixture(scope="module")
def digits_ext():
    return load_extractor("digits")


@pytest.fixture(scope="module")
def digits16():
    return load_dataset(DataConfig(source="digits", image_size=16, channels=1), progress=False)


# --------------------------------------------------------------------------------------------
# digits: the shipped weights


def test_extractor_names():
    assert EXTRACTORS == ("digits", "inception")


def test_shipped_digits_weights_load(digits_ext):
    assert isinstance(digits_ext, FeatureExtractor)
    assert digits_ext.name == "digits"
    assert digits_ext.dims == 128
    assert HEX16.match(digits_ext.fingerprint)
    assert digits_ext.held_out_accuracy is not None and digits_ext.held_out_accuracy >= 0.97
    meta = digits_ext.metadata
    assert int(meta["n_train"]) + int(meta["n_held_out"]) == 1797
    assert sum(p.numel() for p in digits_ext.model.parameters()) == int(meta["parameters"])


def test_held_out_accuracy_recomputed(digits_ext, digits16):
    """The split of the training script, rebuilt from the metadata, gives the stated accuracy."""
    meta = digits_ext.metadata
    train, held = held_out_split(digits16.labels.numpy(), int(meta["split_seed"]))
    assert len(train) == int(meta["n_train"]) and len(held) == int(meta["n_held_out"])
    assert not set(train.tolist()) & set(held.tolist())
    # stratified: every digit is held out in proportion (±1 image)
    counts = np.bincount(digits16.labels.numpy()[held], minlength=10)
    expected = np.bincount(digits16.labels.numpy(), minlength=10) * len(held) / 1797
    assert np.all(np.abs(counts - expected) <= 1)
    pred = digits_ext.logits(digits16.images_uint8[held]).argmax(1)
    accuracy = (pred == digits16.labels[held]).float().mean().item()
    assert accuracy >= 0.97
    # the same number as in the metadata, up to one image (thread count may flip a near tie)
    assert abs(accuracy - digits_ext.held_out_accuracy) <= 1.0 / len(held) + 1e-9


def test_digits_features_shape_dtype(digits_ext, digits16):
    images = digits16.images_uint8[:10]
    feats = digits_ext(images)
    assert feats.shape == (10, 128) and feats.dtype == torch.float32
    assert feats.device.type == "cpu"
    assert torch.all(feats >= 0)  # after the ReLU
    assert digits_ext(images[:0]).shape == (0, 128)


def test_extract_features_batches(digits_ext, digits16):
    images = digits16.images_uint8[:50]
    whole = extract_features(digits_ext, images, progress=False)
    batched = extract_features(digits_ext, images, batch_size=7, progress=False)
    assert whole.dtype == np.float64 and whole.shape == (50, 128)
    np.testing.assert_allclose(batched, whole, rtol=0, atol=1e-5)
    np.testing.assert_allclose(whole, digits_ext(images).double().numpy(), rtol=0, atol=1e-5)


def test_digits_input_size_invariance(digits_ext, digits16):
    """The same digits made at 32×32 (bicubic 8→32 by the data pipeline; the extractor then
    downsizes with antialiased bilinear) give features close to the 16×16 ones.

    Measured on all 1797 digits with the shipped weights: relative L2 distance median 0.05,
    max 0.12 (8×8 inputs, upscaled by the extractor: median 0.10, max 0.23), against a median
    of 0.23 between two different images of the same digit and 0.93 between random pairs; the
    predicted class never changes. The bounds below leave some room for retrained weights.
    """
    d32 = load_dataset(DataConfig(source="digits", image_size=32, channels=1), progress=False)
    f16 = digits_ext(digits16.images_uint8)
    f32 = digits_ext(d32.images_uint8)
    rel = (f32 - f16).norm(dim=1) / f16.norm(dim=1)
    assert rel.median() < 0.10
    assert rel.max() < 0.25
    same_class = digits_ext.model.head(f32).argmax(1) == digits_ext.model.head(f16).argmax(1)
    assert same_class.float().mean() >= 0.99


def test_rgb_equals_replicated_gray(digits_ext, digits16):
    gray = digits16.images_uint8[:20]
    assert torch.equal(digits_ext(gray.repeat(1, 3, 1, 1)), digits_ext(gray))
    # a colour image goes through ITU-R 601 luma: pure red 255 is gray 76.2
    red = torch.zeros(1, 3, 16, 16, dtype=torch.uint8)
    red[:, 0] = 255
    luma = torch.full((1, 1, 16, 16), 0.299 * 255)
    from ddpmkit.metrics.digits_cnn import preprocess

    assert torch.allclose(preprocess(red), luma / 127.5 - 1, atol=1e-4)


def test_fingerprint_stable_and_tracks_weights(digits_ext, tmp_path):
    assert load_extractor("digits").fingerprint == digits_ext.fingerprint
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(DIGITS_WEIGHTS_PATH.read_bytes())
    assert load_extractor("digits", weights=copy).fingerprint == digits_ext.fingerprint

    tensors = load_file(str(DIGITS_WEIGHTS_PATH))
    # the metadata is not part of the fingerprint (safetensors writes it in no fixed order)
    relabelled = tmp_path / "relabelled.safetensors"
    save_file(tensors, str(relabelled), metadata={"note": "same weights"})
    assert load_extractor("digits", weights=relabelled).fingerprint == digits_ext.fingerprint

    tensors["head.bias"] = tensors["head.bias"] + 1e-3
    changed = tmp_path / "changed.safetensors"
    save_file(tensors, str(changed), metadata=digits_ext.metadata)
    other = load_extractor("digits", weights=changed)
    assert HEX16.match(other.fingerprint) and other.fingerprint != digits_ext.fingerprint


def test_digits_bad_weights(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_extractor("digits", weights=tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ConfigError, match="not a readable safetensors"):
        load_extractor("digits", weights=junk)
    wrong = tmp_path / "wrong.safetensors"
    save_file({"weight": torch.zeros(3)}, str(wrong))
    with pytest.raises(ConfigError, match="digits CNN"):
        load_extractor("digits", weights=wrong)
    # a CNN of another width does not fit either
    other = DigitsCNN(widths=(16, 32, 64))
    save_file(other.state_dict(), str(wrong))
    with pytest.raises(ConfigError, match="digits CNN"):
        load_extractor("digits", weights=wrong)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((2, 16, 16, 1), np.uint8), "torch.Tensor.*permute"),
        (torch.zeros(2, 1, 16, 16), "uint8.*to_uint8"),
        (torch.zeros(1, 16, 16, dtype=torch.uint8), r"\(N, C, H, W\)"),
        (torch.zeros(2, 16, 16, 3, dtype=torch.uint8), "channels"),
        (torch.zeros(2, 2, 16, 16, dtype=torch.uint8), "channels"),
        (torch.zeros(2, 1, 16, 12, dtype=torch.uint8), "square"),
    ],
)
def test_bad_images(digits_ext, images, message):
    with pytest.raises(ConfigError, match=message):
        digits_ext(images)
    with pytest.raises(ConfigError, match=message):
        extract_features(digits_ext, images, progress=False)


def test_bad_names_and_options(digits_ext):
    with pytest.raises(ConfigError, match="unknown feature extractor 'vgg'.*digits, inception"):
        load_extractor("vgg")
    with pytest.raises(ConfigError, match="unknown device"):
        load_extractor("digits", device="toaster")
    images = torch.zeros(2, 1, 16, 16, dtype=torch.uint8)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="batch_size"):
            extract_features(digits_ext, images, batch_size=bad, progress=False)


def test_imports_stay_light():
    code = (
        "import sys, ddpmkit, ddpmkit.metrics\n"
        "assert 'torch' not in sys.modules, 'ddpmkit.metrics imports torch'\n"
        "import ddpmkit.metrics.extractors\n"
        "heavy = [m for m in ('torch_fidelity', 'sklearn', 'torchvision') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --------------------------------------------------------------------------------------------
# inception: the adapter, against a fake torch-fidelity


class _NotATensor:
    """Pickled into a weights file: must be refused without being unpickled."""


def test_inception_without_torch_fidelity(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # import fails as if not installed
    with pytest.raises(ConfigError) as info:
        load_extractor("inception")
    assert 'pip install "ddpmkit[inception]"' in str(info.value)
    assert "torchvision" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.fixture
def fake_fidelity(monkeypatch, tmp_path):
    """A fake ``torch_fidelity.feature_extractor_inceptionv3``; returns the list of builds."""
    builds: list[dict] = []
    proj = torch.randn(48, 2048, generator=torch.Generator().manual_seed(0))

    class FakeInceptionV3(torch.nn.Module):
        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__()
            state = torch.load(feature_extractor_weights_path, weights_only=True)
            self.register_buffer("gain", state["gain"])
            self.seen: list[tuple[int, ...]] = []
            builds.append(
                {
                    "name": name,
                    "features_list": features_list,
                    "path": feature_extractor_weights_path,
                    "kwargs": kwargs,
                    "model": self,
                }
            )

        def forward(self, x):
            assert x.dtype == torch.uint8 and x.ndim == 4 and x.shape[1] == 3
            self.seen.append(tuple(x.shape))
            pooled = F.adaptive_avg_pool2d(x.float(), 4).flatten(1)  # (N, 48)
            return (pooled @ proj * self.gain,)

    package = types.ModuleType("torch_fidelity")
    package.__path__ = []
    package.__version__ = "0.0-fake"
    module = types.ModuleType("torch_fidelity.feature_extractor_inceptionv3")
    module.FeatureExtractorInceptionV3 = FakeInceptionV3
    package.feature_extractor_inceptionv3 = module
    monkeypatch.setitem(sys.modules, "torch_fidelity", package)
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", module)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return builds


def _weights(path: Path, gain: float = 1.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"gain": torch.tensor(gain)}, path)
    return path


def test_inception_missing_weights(fake_fidelity, tmp_path):
    cache = tmp_path / "hub" / "checkpoints" / INCEPTION_WEIGHTS_FILE
    with pytest.raises(ConfigError) as info:
        load_extractor("inception")
    message = str(info.value)
    assert str(cache) in message and "weights=" in message and INCEPTION_WEIGHTS_URL in message
    assert "\n" not in message
    with pytest.raises(ConfigError, match="missing.pth' not found"):
        load_extractor("inception", weights=tmp_path / "missing.pth")
    assert not fake_fidelity


@pytest.mark.parametrize(
    "content",
    [
        {"gain": torch.tensor(1.0), "extra": _NotATensor()},  # an arbitrary object: refused
        [torch.tensor(1.0)],  # tensors, but not a state dict
        b"garbage",  # corrupt
        "pickle",  # a plain pickle of an object, not written by torch.save
    ],
)
def test_inception_refuses_unsafe_or_corrupt_weights(fake_fidelity, tmp_path, content):
    path = tmp_path / "w.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "pickle":
        path.write_bytes(pickle.dumps(_NotATensor()))
    else:
        torch.save(content, path)
    with pytest.raises(ConfigError, match="w.pth"):
        load_extractor("inception", weights=path)
    assert not fake_fidelity  # refused before torch-fidelity saw the file


def test_inception_valid_weights(fake_fidelity, tmp_path):
    path = _weights(tmp_path / "w.pth")
    ext = load_extractor("inception", weights=path)
    assert isinstance(ext, FeatureExtractor)
    assert (ext.name, ext.dims) == ("inception", 2048)
    (build,) = fake_fidelity
    assert build["name"] == "inception-v3-compat"
    assert build["features_list"] == ["2048"]
    assert build["path"] == str(path)
    assert ext.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert HEX16.match(ext.fingerprint)

    rng = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (5, 3, 32, 32), generator=rng, dtype=torch.uint8)
    feats = ext(images)
    assert feats.shape == (5, 2048) and feats.dtype == torch.float32
    assert feats.device.type == "cpu"


def test_inception_default_cache_and_fingerprint(fake_fidelity, tmp_path):
    cache = _weights(tmp_path / "hub" / "checkpoints" / INCEPTION_WEIGHTS_FILE)
    ext = load_extractor("inception")
    assert fake_fidelity[0]["path"] == str(cache)
    assert load_extractor("inception").fingerprint == ext.fingerprint
    other = load_extractor("inception", weights=_weights(tmp_path / "other.pth", gain=2.0))
    assert other.fingerprint != ext.fingerprint


def test_inception_gray_replicated(fake_fidelity, tmp_path):
    ext = load_extractor("inception", weights=_weights(tmp_path / "w.pth"))
    rng = torch.Generator().manual_seed(2)
    gray = torch.randint(0, 256, (4, 1, 16, 16), generator=rng, dtype=torch.uint8)
    feats = ext(gray)
    assert fake_fidelity[0]["model"].seen[-1] == (4, 3, 16, 16)
    assert torch.equal(feats, ext(gray.repeat(1, 3, 1, 1)))


def test_inception_extract_features_batches(fake_fidelity, tmp_path):
    ext = load_extractor("inception", weights=_weights(tmp_path / "w.pth"))
    rng = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (10, 3, 8, 8), generator=rng, dtype=torch.uint8)
    whole = extract_features(ext, images, progress=False)
    batched = extract_features(ext, images, batch_size=3, progress=False)
    assert whole.shape == (10, 2048) and whole.dtype == np.float64
    np.testing.assert_allclose(batched, whole, rtol=1e-5, atol=1e-3)
    assert [s[0] for s in fake_fidelity[0]["model"].seen[-4:]] == [3, 3, 3, 1]
