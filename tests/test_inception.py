"""The FID Inception-v3 of :mod:`ddpmkit.metrics.inception`: install and import without
torchvision, key layout, weights loading and its errors, the TensorFlow 1.x resize, and
agreement with torch-fidelity's / pytorch-fid's network on the same random weights.

The real weights (~100 MB) are not available here: every test uses random weights in the
standard file's key layout, written with ``torch.save`` of tensors only.

torch-fidelity and pytorch-fid need torchvision, and PyPI's torchvision does not import next
to the CPU build of torch ("operator torchvision::nms does not exist"). torch-fidelity's
Inception, FID and KID modules never use torchvision, so where its package is installed but
does not import, those modules are imported with an empty stand-in for torchvision. The
comparisons skip where neither package is installed.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import pickle
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpmkit.errors import ConfigError
from ddpmkit.metrics.extractors import (
    INCEPTION_WEIGHTS_FILES,
    INCEPTION_WEIGHTS_URL,
    FeatureExtractor,
    extract_features,
    inception_from_state,
    load_extractor,
)
from ddpmkit.metrics.inception import (
    FIDInceptionV3,
    random_inception_state,
    resize_bilinear_tf1,
)


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return random_inception_state(seed=0)


@pytest.fixture(scope="module")
def weights_file(state, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("inception") / INCEPTION_WEIGHTS_FILES[0]
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def extractor(weights_file):
    return load_extractor("inception", weights=weights_file)


def _images(n: int, size: int, channels: int = 3, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), generator=gen, dtype=torch.uint8)


# --------------------------------------------------------------------------------------------
# install and import


@pytest.mark.slow
def test_inception_path_needs_no_torchvision():
    """Build the network and embed two images in a fresh interpreter where torchvision and
    torch_fidelity cannot be imported at all."""
    code = (
        "import sys\n"
        "sys.modules['torchvision'] = None\n"
        "sys.modules['torch_fidelity'] = None\n"
        "sys.modules['pytorch_fid'] = None\n"
        "import torch\n"
        "from ddpmkit.metrics.extractors import inception_from_state\n"
        "from ddpmkit.metrics.inception import random_inception_state\n"
        "ext = inception_from_state(random_inception_state(3))\n"
        "x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)\n"
        "f = ext(x)\n"
        "assert f.shape == (2, 2048) and torch.isfinite(f).all()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_key_layout_is_the_standard_files():
    keys = set(FIDInceptionV3().state_dict())
    weights = {k for k in keys if not k.endswith("num_batches_tracked")}
    assert len(weights) == 94 * 5 + 2  # conv weight + 4 BatchNorm tensors per layer, fc
    assert "Conv2d_1a_3x3.conv.weight" in weights and "fc.weight" in weights
    assert "Mixed_7c.branch3x3dbl_3b.bn.running_var" in weights
    assert not any("AuxLogits" in k for k in keys)
    assert tuple(FIDInceptionV3().fc.weight.shape) == (1008, 2048)
    params = sum(v.numel() for k, v in random_inception_state().items())
    assert params == 23_885_392


def test_random_weights_embed_images(extractor):
    assert isinstance(extractor, FeatureExtractor)
    assert (extractor.name, extractor.dims) == ("inception", 2048)
    feats = extractor(_images(3, 32))
    assert feats.shape == (3, 2048) and feats.dtype == torch.float32
    assert torch.isfinite(feats).all() and feats.std() > 0.1  # not collapsed
    assert (feats >= 0).all()  # a mean of ReLU outputs
    assert extractor(_images(0, 32)).shape == (0, 2048)


@pytest.mark.slow
def test_gray_is_replicated_and_chunks_do_not_matter(extractor):
    gray = _images(3, 24, channels=1, seed=2)
    assert torch.equal(extractor(gray), extractor(gray.repeat(1, 3, 1, 1)))
    images = _images(5, 20, seed=3)
    whole = extract_features(extractor, images, progress=False)
    chunk, extractor.chunk = extractor.chunk, 2
    try:
        batched = extract_features(extractor, images, batch_size=3, progress=False)
    finally:
        extractor.chunk = chunk
    np.testing.assert_allclose(batched, whole, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# resize and normalisation


def test_tf1_resize_identity_and_integer_downscale():
    x = torch.rand(2, 3, 299, 299) * 255
    assert resize_bilinear_tf1(x, 299) is x
    # 598 → 299: TensorFlow 1.x samples input pixel 2i exactly (no half-pixel offset)
    big = torch.rand(1, 3, 598, 598) * 255
    assert torch.equal(resize_bilinear_tf1(big, 299), big[:, :, ::2, ::2])


def test_tf1_resize_upscale_by_hand():
    """in = 2, out = 4: source coordinates 0, 0.5, 1, 1.5 → the last one is clamped."""
    x = torch.tensor([[0.0, 8.0], [16.0, 24.0]]).view(1, 1, 2, 2)
    out = resize_bilinear_tf1(x, 4)
    row = torch.tensor([0.0, 4.0, 8.0, 8.0])
    expected = torch.stack([row, row + 8, row + 16, row + 16]).view(1, 1, 4, 4)
    assert torch.equal(out, expected)


def test_preprocess_range():
    x = FIDInceptionV3.preprocess(torch.tensor([0, 128, 255], dtype=torch.uint8).view(1, 3, 1, 1))
    assert x.shape == (1, 3, 299, 299)
    assert x[0, :, 0, 0].tolist() == [-1.0, 0.0, 127 / 128]


# --------------------------------------------------------------------------------------------
# weights: files, defaults, errors


@pytest.mark.slow
def test_default_cache_files_and_fingerprint(state, weights_file, extractor, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(ConfigError) as info:
        load_extractor("inception")
    message = str(info.value)
    assert INCEPTION_WEIGHTS_URL in message and "--feature-weights" in message
    assert str(tmp_path / "hub" / "checkpoints" / INCEPTION_WEIGHTS_FILES[0]) in message
    assert "\n" not in message
    # torch-fidelity's file name is found too; a legacy (non-zip) file with the BatchNorm
    # counters holds the same tensors: the same fingerprint
    other = tmp_path / "hub" / "checkpoints" / INCEPTION_WEIGHTS_FILES[1]
    other.parent.mkdir(parents=True)
    counters = {k: v for k, v in FIDInceptionV3().state_dict().items() if "num_batches" in k}
    torch.save({**state, **counters}, other, _use_new_zipfile_serialization=False)
    found = load_extractor("inception")
    assert found.weights_path == other
    assert found.fingerprint == extractor.fingerprint
    assert found.weights_sha256 == hashlib.sha256(other.read_bytes()).hexdigest()
    assert extractor.weights_sha256 == hashlib.sha256(weights_file.read_bytes()).hexdigest()
    changed = dict(state)
    changed["fc.bias"] = changed["fc.bias"] + 1
    assert inception_from_state(changed).fingerprint != extractor.fingerprint


class _NotATensor:
    """Pickled into a weights file: must be refused without being unpickled."""


def _drop(state, prefix):
    return {k: v for k, v in state.items() if not k.startswith(prefix)}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda s: None, "not found"),
        (lambda s: b"garbage", "corrupt or holds objects other than tensors"),
        (lambda s: "pickle", "corrupt or holds objects other than tensors"),
        (lambda s: {**s, "x": _NotATensor()}, "corrupt or holds objects other than tensors"),
        (lambda s: list(s.values())[:3], "not a state dict of named tensors"),
        (lambda s: _drop(s, "Mixed_7c"), r"45 of its 472 tensors missing \(Mixed_7c\."),
        (lambda s: {**s, "AuxLogits.fc.weight": torch.zeros(2)}, "1 unknown tensors"),
        (lambda s: {**s, "fc.weight": torch.zeros(1000, 2048)}, r"'fc.weight' is .*\(1008, 2048\)"),
        (lambda s: {**s, "fc.bias": torch.zeros(1008, dtype=torch.long)}, "float tensor"),
    ],
)
def test_bad_weight_files_are_one_line_errors(state, tmp_path, make, message):
    path = tmp_path / "w.pth"
    content = make(state)
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "pickle":
        path.write_bytes(pickle.dumps(_NotATensor()))
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(ConfigError, match=message) as info:
        load_extractor("inception", weights=path)
    assert "\n" not in str(info.value) and "w.pth" in str(info.value)


@pytest.mark.slow
def test_imports_stay_light():
    code = (
        "import sys, ddpmkit.metrics.extractors, ddpmkit.fid\n"
        "heavy = [m for m in ('torch_fidelity', 'torchvision', 'pytorch_fid', "
        "'ddpmkit.metrics.inception') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --------------------------------------------------------------------------------------------
# agreement with torch-fidelity and pytorch-fid


def _stub_module(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = []

    def attribute(attr: str) -> type:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return type(attr, (), {})  # any class or function name it asks for

    module.__getattr__ = attribute
    return module


@pytest.fixture(scope="module")
def torch_fidelity():
    """(feature_extractor_inceptionv3, metric_fid, metric_kid, how) or None."""
    names = ("feature_extractor_inceptionv3", "metric_fid", "metric_kid")
    try:
        modules = [importlib.import_module(f"torch_fidelity.{n}") for n in names]
        yield (*modules, "imported")
        return
    except ModuleNotFoundError as e:
        if e.name == "torch_fidelity" or importlib.util.find_spec("torch_fidelity") is None:
            yield None
            return
    except Exception:  # noqa: BLE001 - torchvision's RuntimeError next to the CPU torch
        pass
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in ("torchvision",)}
    for key in [k for k in sys.modules if k.split(".")[0] in ("torch_fidelity", "torchvision")]:
        del sys.modules[key]
    for name in (
        "torchvision",
        "torchvision.datasets",
        "torchvision.transforms",
        "torchvision.transforms.functional",
        "torchvision.models",
    ):
        sys.modules[name] = _stub_module(name)
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, sys.modules[name])
    try:
        modules = [importlib.import_module(f"torch_fidelity.{n}") for n in names]
        yield (*modules, "imported with torchvision stubbed")
    except Exception:  # noqa: BLE001
        yield None
    finally:
        for key in [k for k in sys.modules if k.split(".")[0] in ("torch_fidelity", "torchvision")]:
            del sys.modules[key]
        sys.modules.update(saved)


@pytest.fixture(scope="module")
def pytorch_fid():
    try:
        return importlib.import_module("pytorch_fid.inception")
    except Exception:  # noqa: BLE001 - not installed, or torchvision does not import
        return None


def test_network_matches_reference_implementations(
    state, weights_file, extractor, torch_fidelity, pytorch_fid, monkeypatch
):
    if torch_fidelity is None and pytorch_fid is None:
        pytest.skip("neither torch-fidelity nor pytorch-fid imports here")
    images = _images(3, 32, seed=4)
    ours = extractor(images)
    compared = []
    if torch_fidelity is not None:
        fe = torch_fidelity[0]
        theirs = fe.FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights_file)
        )
        with torch.no_grad():
            ref = theirs(images)[0]
            ref299 = theirs(_images(1, 299, seed=5))[0]
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(extractor(_images(1, 299, seed=5)), ref299, rtol=1e-4, atol=1e-4)
        compared.append("torch-fidelity")
    if pytorch_fid is not None:
        # its network on our preprocessed input (it resizes and scales differently itself)
        monkeypatch.setattr(pytorch_fid, "load_state_dict_from_url", lambda *a, **k: state)
        net = pytorch_fid.InceptionV3([3], resize_input=False, normalize_input=False).eval()
        with torch.no_grad():
            ref = net(FIDInceptionV3.preprocess(images))[0].flatten(1)
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
        compared.append("pytorch-fid")
    assert compared


def test_fid_and_kid_match_torch_fidelity(torch_fidelity):
    if torch_fidelity is None:
        pytest.skip("torch-fidelity is not installed")
    from ddpmkit.metrics.frechet import GaussianStats, frechet_distance
    from ddpmkit.metrics.kid import kernel_inception_distance, mmd2_unbiased

    _, metric_fid, metric_kid, _ = torch_fidelity
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 24))
    b = rng.normal(size=(300, 24)) @ (np.eye(24) + 0.1 * rng.normal(size=(24, 24))) + 0.3
    stats = [metric_fid.fid_features_to_statistics(torch.from_numpy(x)) for x in (a, b)]
    theirs = metric_fid.fid_statistics_to_metric(*stats, verbose=False)
    ours = frechet_distance(GaussianStats.of(a), GaussianStats.of(b))
    assert ours == pytest.approx(theirs["frechet_inception_distance"], rel=1e-9)

    kwargs = {
        "kid_kernel": "poly",
        "kid_kernel_poly_degree": 3,
        "kid_kernel_poly_gamma": None,
        "kid_kernel_poly_coef0": 1,
    }
    assert mmd2_unbiased(a[:100], b[:100]) == pytest.approx(
        metric_kid.kernel_mmd(a[:100], b[:100], **kwargs), rel=1e-12
    )
    # subsets of all samples: every subset's MMD² is the full sets' one in both
    full = metric_kid.kid_features_to_metric(
        torch.from_numpy(b),
        torch.from_numpy(a),
        kid_subsets=3,
        kid_subset_size=300,
        verbose=False,
        **kwargs,
    )
    kid = kernel_inception_distance(b, a, subsets=3, subset_size=1000)
    assert kid.mean == pytest.approx(full["kernel_inception_distance_mean"], rel=1e-9)
