"""Feature extractors for FID / KID / precision-recall, behind one interface.

An extractor maps uint8 images ``(N, C, H, W)`` (C ∈ {1, 3}, any square size) to float32
features ``(N, dims)`` on the CPU. Three are available (:data:`EXTRACTORS`):

``digits``
    The penultimate layer (128-d, after its ReLU) of a small CNN trained on scikit-learn's digits
    at 16×16; weights ship with the package (``weights/digits_cnn.safetensors``), with the
    classifier's held-out accuracy in their metadata. Preprocessing (gray, resize to 16×16,
    scaling) is in :mod:`ddpmkit.metrics.digits_cnn`. Numbers computed with it are comparable
    only with numbers computed with the same weights (see ``fingerprint``), not with published
    FIDs.
``fashion-mnist``
    The same kind of network trained on Fashion-MNIST's 60,000 training images at 28×28
    (:mod:`ddpmkit.metrics.fashion_cnn`, ``weights/fashion_cnn.safetensors``, trained by
    ``tools/train_fashion_classifier.py``); its test accuracy and real-vs-real floors are in the
    weights' metadata. Samples are judged against the 10,000 test images.
``inception``
    The standard FID Inception-v3 (TensorFlow weights of 2015-12-05, 2048-d pool features),
    built in plain PyTorch by :mod:`ddpmkit.metrics.inception` (no torchvision, no
    torch-fidelity). Weights are never downloaded: they are read from ``weights=`` or from
    pytorch-fid's / torch-fidelity's cache file, loaded with the tensors-only unpickler
    (``torch.load(weights_only=True)``) and checked against the network's key map. Every image
    is resized to 299×299 with TensorFlow 1.x's bilinear resize, as the reference FID code did.

``fingerprint`` (16 hex digits) hashes the weights together with a preprocessing version
string: cached reference statistics are valid only for the same fingerprint. The hash runs over
the tensors (names, dtypes, shapes, bytes), not over the file: safetensors writes the metadata in
no fixed order, and the two published Inception files hold the same tensors.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from tqdm import tqdm

from ddpmkit.config.messages import check_choice
from ddpmkit.errors import ConfigError
from ddpmkit.metrics.digits_cnn import PREPROCESS_VERSION, DigitsCNN, preprocess
from ddpmkit.metrics.fashion_cnn import PREPROCESS_VERSION as FASHION_PREPROCESS_VERSION
from ddpmkit.metrics.fashion_cnn import fashion_cnn, fashion_preprocess
from ddpmkit.sharding import gather_shares, process_group, shard_range

__all__ = [
    "CLASSIFIERS",
    "DIGITS_WEIGHTS_PATH",
    "EXTRACTORS",
    "FASHION_WEIGHTS_PATH",
    "ClassifierExtractor",
    "INCEPTION_WEIGHTS_FILE",
    "INCEPTION_WEIGHTS_FILES",
    "INCEPTION_WEIGHTS_URL",
    "DigitsExtractor",
    "FeatureExtractor",
    "InceptionExtractor",
    "check_images",
    "default_inception_weights_path",
    "default_inception_weights_paths",
    "extract_features",
    "inception_from_state",
    "load_extractor",
]

EXTRACTORS = ("digits", "fashion-mnist", "inception")


@dataclass(frozen=True)
class ClassifierSpec:
    """A small classifier shipped as a feature extractor: its weights file (in the package),
    the network, the preprocessing, its version string and the tool that trains it."""

    weights: str
    network: Callable[[], DigitsCNN]
    preprocess: Callable[[torch.Tensor], torch.Tensor]
    preprocess_version: str
    tool: str


CLASSIFIERS = {
    "digits": ClassifierSpec(
        "weights/digits_cnn.safetensors",
        DigitsCNN,
        preprocess,
        PREPROCESS_VERSION,
        "tools/train_digits_classifier.py",
    ),
    "fashion-mnist": ClassifierSpec(
        "weights/fashion_cnn.safetensors",
        fashion_cnn,
        fashion_preprocess,
        FASHION_PREPROCESS_VERSION,
        "tools/train_fashion_classifier.py",
    ),
}
DIGITS_WEIGHTS_PATH = Path(__file__).parent / CLASSIFIERS["digits"].weights
"""Where the shipped digits weights live (the training script's default output)."""
FASHION_WEIGHTS_PATH = Path(__file__).parent / CLASSIFIERS["fashion-mnist"].weights
"""… and the Fashion-MNIST ones."""

INCEPTION_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_FILES = (INCEPTION_WEIGHTS_FILE, "weights-inception-2015-12-05-6726825d.pth")
"""pytorch-fid's and torch-fidelity's names for the same converted TensorFlow weights."""
INCEPTION_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    + INCEPTION_WEIGHTS_FILE
)
INCEPTION_PREPROCESS_VERSION = (
    "inception-pre-v2: ddpmkit FIDInceptionV3, TF1 bilinear to 299, (x-128)/128, pool 2048"
)
_INCEPTION_DIMS = 2048


@runtime_checkable
class FeatureExtractor(Protocol):
    """What FID/KID code needs: a name, a feature size, a fingerprint and a call."""

    name: str
    dims: int
    fingerprint: str

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(N, C, H, W)``, C ∈ {1, 3}, H == W → float32 ``(N, dims)`` on the CPU."""
        ...


# --------------------------------------------------------------------------------------------
# input checks


def check_images(images: object) -> None:
    """Raise :class:`ConfigError` unless ``images`` is uint8 ``(N, C, S, S)`` with C in {1, 3}."""
    if not isinstance(images, torch.Tensor):
        hint = (
            ": use torch.from_numpy(a).permute(0, 3, 1, 2) for an (N, H, W, C) array"
            if isinstance(images, np.ndarray)
            else ""
        )
        raise ConfigError(
            f"feature extractors take a torch.Tensor of images, got {type(images).__name__}{hint}"
        )
    shape = tuple(images.shape)
    if images.dtype != torch.uint8:
        raise ConfigError(
            f"feature extractors take uint8 images (levels 0..255), got {images.dtype}: convert "
            "[-1, 1] floats with ddpmkit.data.to_uint8"
        )
    if images.ndim != 4:
        raise ConfigError(
            f"feature extractors take a batch of shape (N, C, H, W), got shape {shape}: "
            "add the missing batch or channel dimension"
        )
    if shape[1] not in (1, 3):
        raise ConfigError(
            f"feature extractors take 1 (gray) or 3 (RGB) channels in dimension 1, got shape "
            f"{shape}: permute (N, H, W, C) batches with .permute(0, 3, 1, 2)"
        )
    if shape[2] != shape[3] or shape[2] == 0:
        raise ConfigError(
            f"feature extractors take square, non-empty images, got shape {shape}: "
            "center-crop them first"
        )


def _device(device: str | torch.device) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"unknown device {device!r}: use e.g. 'cpu' or 'cuda' ({e})") from None


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split())  # one line
    if len(text) > 160:
        text = text[:157] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of ``tensors``, in name order.

    Not the file's bytes: safetensors writes the metadata in no fixed order, so two files with
    the same weights and metadata can differ.
    """
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _short_hash(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# digits


class ClassifierExtractor:
    """The ``digits`` and ``fashion-mnist`` extractors: penultimate features of a small
    classifier (:data:`CLASSIFIERS`).

    ``metadata`` is the weights file's metadata (strings); ``held_out_accuracy`` (digits: a
    held-out fifth; Fashion-MNIST: the test set) and ``split_seed`` are read from it (``None``
    when absent).
    """

    def __init__(
        self,
        model: DigitsCNN,
        *,
        fingerprint: str,
        metadata: Mapping[str, str],
        device: torch.device,
        name: str = "digits",
    ) -> None:
        self.name = name
        self._preprocess = CLASSIFIERS[name].preprocess
        self.model = model.to(device).eval().requires_grad_(False)
        self.device = device
        self.dims = model.feature_dim
        self.fingerprint = fingerprint
        self.metadata = dict(metadata)

    @property
    def held_out_accuracy(self) -> float | None:
        value = self.metadata.get("held_out_accuracy", self.metadata.get("test_accuracy"))
        return float(value) if value is not None else None

    @property
    def split_seed(self) -> int | None:
        value = self.metadata.get("split_seed")
        return int(value) if value is not None else None

    def _run(self, images: torch.Tensor, logits: bool) -> torch.Tensor:
        check_images(images)
        out_dims = self.model.head.out_features if logits else self.dims
        if images.shape[0] == 0:
            return torch.empty((0, out_dims), dtype=torch.float32)
        with torch.no_grad():
            x = self._preprocess(images.to(self.device))
            out = self.model(x) if logits else self.model.features(x)
        return out.to(device="cpu", dtype=torch.float32)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Features ``(N, dims)``, float32 on the CPU."""
        return self._run(images, logits=False)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits ``(N, 10)``, float32 on the CPU."""
        return self._run(images, logits=True)

    def __repr__(self) -> str:
        acc = self.held_out_accuracy
        acc_text = f", held-out accuracy {acc:.4f}" if acc is not None else ""
        return (
            f"ClassifierExtractor({self.name!r}, dims={self.dims}, "
            f"fingerprint={self.fingerprint}{acc_text})"
        )


DigitsExtractor = ClassifierExtractor  # the name before Fashion-MNIST


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file given as bytes (already validated)."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    meta = header.get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()}


def _load_classifier(
    name: str, weights: str | Path | None, device: torch.device
) -> ClassifierExtractor:
    from safetensors.torch import load as load_safetensors

    spec = CLASSIFIERS[name]
    if weights is None:
        where = f"the shipped {spec.weights}"
        try:
            data = resources.files(__package__).joinpath(spec.weights).read_bytes()
        except OSError as e:  # pragma: no cover - a broken installation
            raise ConfigError(
                f"cannot read {where} ({_reason(e)}): reinstall ddpmkit or retrain with {spec.tool}"
            ) from None
    else:
        path = Path(weights).expanduser()
        where = f"'{path}'"
        if not path.is_file():
            raise ConfigError(f"{name} weights file '{path}' not found: give a .safetensors file")
        data = path.read_bytes()
    try:
        tensors = load_safetensors(data)
        metadata = _safetensors_metadata(data)
    except Exception as e:  # noqa: BLE001 - safetensors raises several kinds for a bad file
        raise ConfigError(
            f"{where} is not a readable safetensors file ({_reason(e)}): give the file written "
            f"by {spec.tool}"
        ) from None
    model = spec.network()
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise ConfigError(
            f"{where} does not hold the {name} CNN's weights ({_reason(e)}): give the file "
            f"written by {spec.tool}"
        ) from None
    return ClassifierExtractor(
        model,
        fingerprint=_short_hash(_tensors_digest(tensors), spec.preprocess_version),
        metadata=metadata,
        device=device,
        name=name,
    )


# --------------------------------------------------------------------------------------------
# inception


def default_inception_weights_paths() -> list[Path]:
    """Where the weights are looked for when none are given, in order: pytorch-fid's and
    torch-fidelity's cache files in ``<torch.hub.get_dir()>/checkpoints/``."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    return [folder / name for name in INCEPTION_WEIGHTS_FILES]


def default_inception_weights_path() -> Path:
    """The first of :func:`default_inception_weights_paths` that exists, else the first."""
    paths = default_inception_weights_paths()
    return next((p for p in paths if p.is_file()), paths[0])


class InceptionExtractor:
    """The ``inception`` extractor: :class:`~ddpmkit.metrics.inception.FIDInceptionV3`,
    2048-d pool features of images resized to 299×299 as TensorFlow 1.x did.

    Gray images are replicated to 3 channels. Batches are run ``chunk`` images at a time (the
    activations of one 299×299 image take ~40 MB). ``weights_sha256`` is the full hash of the
    weights file.
    """

    name = "inception"
    dims = _INCEPTION_DIMS

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        fingerprint: str,
        weights_path: Path | None,
        weights_sha256: str,
        device: torch.device,
        chunk: int = 32,
    ) -> None:
        self.model = model.to(device).eval().requires_grad_(False)
        self.device = device
        self.fingerprint = fingerprint
        self.weights_path = weights_path
        self.weights_sha256 = weights_sha256
        self.chunk = chunk

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Features ``(N, 2048)``, float32 on the CPU."""
        check_images(images)
        if images.shape[0] == 0:
            return torch.empty((0, self.dims), dtype=torch.float32)
        out = []
        with torch.no_grad():
            for start in range(0, images.shape[0], self.chunk):
                x = images[start : start + self.chunk].to(self.device)
                if x.shape[1] == 1:
                    x = x.expand(-1, 3, -1, -1)
                out.append(self.model(x).to(device="cpu", dtype=torch.float32))
        return torch.cat(out)

    def __repr__(self) -> str:
        return f"InceptionExtractor(weights='{self.weights_path}', fingerprint={self.fingerprint})"


_FETCH_HINT = (
    f"nothing is downloaded automatically: fetch {INCEPTION_WEIGHTS_URL} (pytorch-fid's file; "
    f"torch-fidelity's {INCEPTION_WEIGHTS_FILES[1]} holds the same weights) by hand"
)


def _inception_weights(weights: str | Path | None) -> Path:
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"inception weights file '{path}' not found: {_FETCH_HINT} and give its path"
            )
        return path
    path = default_inception_weights_path()
    if not path.is_file():
        raise ConfigError(
            f"no Inception-v3 FID weights: none given (--feature-weights PATH, weights=PATH) and "
            f"none at '{path}'; {_FETCH_HINT} and put it there or pass its path"
        )
    return path


def inception_from_state(
    state: Mapping[str, torch.Tensor],
    device: str | torch.device = "cpu",
    *,
    weights_path: Path | None = None,
    weights_sha256: str = "",
) -> InceptionExtractor:
    """An ``inception`` extractor holding ``state`` (checked first), e.g. random weights from
    :func:`~ddpmkit.metrics.inception.random_inception_state` for tests."""
    from ddpmkit.metrics.inception import build_inception, check_inception_state

    hint = f"give {INCEPTION_WEIGHTS_FILES[0]}"
    check_inception_state(state, "the state dict", hint)
    tensors = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    return InceptionExtractor(
        build_inception(tensors),
        fingerprint=_short_hash(_tensors_digest(tensors), INCEPTION_PREPROCESS_VERSION),
        weights_path=weights_path,
        weights_sha256=weights_sha256,
        device=_device(device),
    )


def _load_inception(weights: str | Path | None, device: torch.device) -> InceptionExtractor:
    from ddpmkit.metrics.inception import load_inception_weights

    path = _inception_weights(weights)
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    state = load_inception_weights(path, data, f"download {INCEPTION_WEIGHTS_URL} again")
    del data
    return inception_from_state(state, device, weights_path=path, weights_sha256=sha)


# --------------------------------------------------------------------------------------------
# public entry points


def load_extractor(
    name: str, *, weights: str | Path | None = None, device: str | torch.device = "cpu"
) -> FeatureExtractor:
    """The extractor called ``name`` (one of :data:`EXTRACTORS`), on ``device``.

    ``weights`` replaces the default weights: a ``.safetensors`` file for ``digits`` and
    ``fashion-mnist``, the
    FID Inception ``.pth`` file (:data:`INCEPTION_WEIGHTS_FILE`) for ``inception``.
    User errors raise :class:`ConfigError`.
    """
    check_choice("feature extractor", name, EXTRACTORS)
    dev = _device(device)
    if name in CLASSIFIERS:
        return _load_classifier(name, weights, dev)
    return _load_inception(weights, dev)


def extract_features(
    extractor: FeatureExtractor,
    images: torch.Tensor,
    *,
    batch_size: int = 500,
    progress: bool = True,
    desc: str = "features",
    distributed: bool = False,
) -> np.ndarray:
    """Features of all ``images`` in batches of ``batch_size``: float64 ``(N, extractor.dims)``.

    Runs under ``torch.inference_mode`` with a tqdm bar (``progress``) counting images.
    ``distributed``: every process of the process group calls this with the same images; each
    embeds its share (:func:`~ddpmkit.sharding.shard_range`) and all receive all features,
    equal to one process's.
    """
    check_images(images)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    group = process_group() if distributed else None
    if group is not None:
        first, last = shard_range(len(images), batch_size, *group)
        share = np.empty((0, extractor.dims), dtype=np.float64)  # more processes than batches
        if last > first:
            share = extract_features(
                extractor, images[first:last], batch_size=batch_size, progress=progress, desc=desc
            )
        return np.concatenate(gather_shares(share))
    n = int(images.shape[0])
    out = np.empty((n, extractor.dims), dtype=np.float64)
    with (
        torch.inference_mode(),
        tqdm(total=n, desc=desc, unit="img", disable=not progress, leave=False) as bar,
    ):
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            feats = extractor(images[start:stop])
            if tuple(feats.shape) != (stop - start, extractor.dims):
                raise RuntimeError(
                    f"extractor {extractor.name!r} returned shape {tuple(feats.shape)} for "
                    f"{stop - start} images, expected ({stop - start}, {extractor.dims})"
                )
            out[start:stop] = feats.numpy()
            bar.update(stop - start)
    return out
