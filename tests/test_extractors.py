"""Feature extractors: the shipped digits CNN and the common interface.

The Inception extractor (our own FID Inception-v3) is tested in ``test_inception.py``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from ddpmkit.data import DataConfig, load_dataset
from ddpmkit.errors import ConfigError
from ddpmkit.metrics.digits_cnn import DigitsCNN, held_out_split
from ddpmkit.metrics.extractors import (
    DIGITS_WEIGHTS_PATH,
    EXTRACTORS,
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
    assert EXTRACTORS == ("digits", "fashion-mnist", "inception")


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
    max 0.12, against a median of 0.23 between two different images of the same digit and 0.93
    between random pairs; the predicted class never changes. The bounds below leave some room
    for retrained weights. (8×8 inputs give the 16×16 features exactly: the next test.)
    """
    d32 = load_dataset(DataConfig(source="digits", image_size=32, channels=1), progress=False)
    f16 = digits_ext(digits16.images_uint8)
    f32 = digits_ext(d32.images_uint8)
    rel = (f32 - f16).norm(dim=1) / f16.norm(dim=1)
    assert rel.median() < 0.10
    assert rel.max() < 0.25
    same_class = digits_ext.model.head(f32).argmax(1) == digits_ext.model.head(f16).argmax(1)
    assert same_class.float().mean() >= 0.99


def test_native_8x8_digits_are_scored_as_the_16x16_digits(digits_ext, digits16):
    """The extractor upscales as the data loader does, so the digits read at their own 8×8
    give exactly the features of the digits ``ddpm train`` reads at 16×16: a run trained at
    8×8 is scored on the scale of the 16×16 runs. Oracles: the loader's 16×16 images, and
    Pillow's bicubic in float, clipped and rounded once, written out here."""
    from PIL import Image

    from ddpmkit.metrics.digits_cnn import preprocess

    d8 = load_dataset(DataConfig(source="digits", image_size=8, channels=1), progress=False)
    assert torch.equal(digits_ext(d8.images_uint8), digits_ext(digits16.images_uint8))
    few = d8.images_uint8[:5]
    expected = []
    for image in few[:, 0].numpy().astype(np.float32):
        up = np.asarray(Image.fromarray(image).resize((16, 16), Image.Resampling.BICUBIC))
        expected.append(np.clip(np.rint(up), 0, 255) / np.float32(127.5) - 1)
    np.testing.assert_array_equal(preprocess(few)[:, 0].numpy(), np.stack(expected))
    # bilinear, what version 1 did, is not that rule
    bilinear = torch.nn.functional.interpolate(few.float(), size=(16, 16), mode="bilinear")
    assert not torch.equal(preprocess(few), bilinear / 127.5 - 1)


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
    with pytest.raises(ConfigError, match="unknown feature extractor 'vgg'.*digits, fashion"):
        load_extractor("vgg")
    with pytest.raises(ConfigError, match="unknown device"):
        load_extractor("digits", device="toaster")
    images = torch.zeros(2, 1, 16, 16, dtype=torch.uint8)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="batch_size"):
            extract_features(digits_ext, images, batch_size=bad, progress=False)


@pytest.mark.slow
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
# fashion-mnist: the shipped weights

FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def fashion_ext():
    return load_extractor("fashion-mnist")


def test_shipped_fashion_weights_load_with_their_record(fashion_ext):
    """The weights carry what tools/train_fashion_classifier.py measured: the test accuracy on
    the 10,000 test images (trained on the 60,000 others), and the real-vs-real floors."""
    assert fashion_ext.name == "fashion-mnist" and fashion_ext.dims == 128
    assert HEX16.match(fashion_ext.fingerprint)
    assert fashion_ext.fingerprint != load_extractor("digits").fingerprint
    meta = fashion_ext.metadata
    assert int(meta["n_train"]) == 60_000 and int(meta["n_test"]) == 10_000
    assert fashion_ext.held_out_accuracy == float(meta["test_accuracy"]) >= 0.90
    assert int(meta["test_correct"]) == round(10_000 * fashion_ext.held_out_accuracy)
    for key in ("fd_train10k_vs_test", "fd_test_halves"):
        assert 0 <= float(meta[key]) < 1  # two real samples are close in these features
    assert sum(p.numel() for p in fashion_ext.model.parameters()) == int(meta["parameters"])


def test_fashion_features_of_28x28_images(fashion_ext):
    """Features of 28×28 images; another size is resized to 28×28 first, so the same picture at
    56×56 lands near its 28×28 self. Measured on six blocky random pictures: relative distance
    0.11–0.18 to itself (antialiased bilinear smears the block edges), 0.54–0.85 between
    different pictures."""
    g = torch.Generator().manual_seed(0)
    coarse = torch.randint(0, 256, (6, 1, 7, 7), generator=g, dtype=torch.uint8)
    images = coarse.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)
    feats = fashion_ext(images)
    assert feats.shape == (6, 128) and feats.dtype == torch.float32 and torch.all(feats >= 0)
    assert fashion_ext.logits(images).shape == (6, 10)
    big = coarse.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3)
    to_self = (fashion_ext(big) - feats).norm(dim=1) / feats.norm(dim=1)
    to_next = (feats.roll(1, 0) - feats).norm(dim=1) / feats.norm(dim=1)
    assert float(to_self.max()) < 0.25 and bool((to_self < 0.5 * to_next).all())
    assert torch.equal(fashion_ext(images.repeat(1, 3, 1, 1)), feats)  # gray as RGB


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_test_accuracy_recomputed_on_the_real_test_set(fashion_ext):
    test = load_dataset(DataConfig(source="fashion-mnist:test", image_size=28), progress=False)
    predicted = torch.cat(
        [
            fashion_ext.logits(test.images_uint8[i : i + 2000]).argmax(1)
            for i in range(0, 10_000, 2000)
        ]
    )
    accuracy = (predicted == test.labels).float().mean().item()
    assert abs(accuracy - fashion_ext.held_out_accuracy) <= 2 / 10_000  # thread-count ties


def test_fashion_mnist_runs_are_judged_against_the_test_split():
    from ddpmkit.evaluation.quality import default_classifier, default_features, default_reference

    train = DataConfig(source="fashion-mnist", image_size=28, random_flip=True)
    assert default_features(train) == "fashion-mnist" == default_classifier(train)
    reference = default_reference(train)
    assert (reference.source, reference.split, reference.random_flip) == (
        "fashion-mnist",
        "test",
        False,
    )
    digits = DataConfig(source="digits")
    assert default_reference(digits) is digits and default_classifier(digits) == "digits"
    assert default_classifier(DataConfig(source="x.npz")) is None


def test_eval_data_is_read_as_written_at_the_runs_size():
    """``ddpm eval --data X`` judges against X with X's own split, not the run's reference split:
    a Fashion-MNIST run's default is its test split, but ``--data ./folder`` (no splits) or
    ``--data fashion-mnist:train`` used to inherit split=test and fail, and a CIFAR folder
    silently gave its test split."""
    from ddpmkit.evaluation.quality import reference_data

    run = DataConfig(source="fashion-mnist", image_size=28, random_flip=True)
    assert (reference_data(run).source, reference_data(run).split) == ("fashion-mnist", "test")
    for given in ("./folder", "fashion-mnist:train", "cifar-10-batches-bin", "hf:user/set:test"):
        ref = reference_data(run, given)
        assert (ref.source, ref.split, ref.random_flip) == (given, None, False)
        assert (ref.image_size, ref.channels) == (28, 1)  # the run's samples' shape
        ref.validate()
    hf_run = DataConfig(source="hf:user/set", split="validation", image_size=32, channels=3)
    assert reference_data(hf_run, "hf:user/set:test").split is None  # the suffix decides
    assert reference_data(hf_run).split == "validation"  # no --data: the run's own
    assert hf_run.read_as_written("./imgs") == reference_data(hf_run, "./imgs")  # nll's too
