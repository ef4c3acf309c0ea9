"""``ddpm fid A B``: FID (and KID, precision, recall) between two image sets or statistics files.

Each side is one of

* an ``.npz`` of uint8 images (``arr_0``, NHWC), an image folder, a CIFAR folder, ``digits`` or
  ``hf:NAME`` — anything :func:`ddpmkit.data.load_dataset` reads;
* a statistics ``.npz`` with ``mu`` (D,) and ``sigma`` (D, D): pytorch-fid's ``--save-stats``
  files, the OpenAI evaluation suite's reference batches and :func:`save_statistics`'s;
* both at once: the OpenAI reference batches (``VIRTUAL_*.npz``) hold ``arr_0`` images next to
  ``mu``/``sigma`` of the whole data set. FID then uses the stored statistics, KID and
  precision/recall the images.

A is the generated set, B the reference: precision is the share of A inside B's manifold, and
B's features are cached like ``ddpm eval``'s reference (:mod:`ddpmkit.metrics.reference`).
Both image sides are brought to one size and channel count by :func:`load_dataset` (the native
size of an images ``.npz`` when not given, so generated samples are not resampled), then the
extractor resizes to its own input exactly as in ``ddpm eval``. Stored statistics must come from
the same extractor: only their dimension can be checked. Statistics ``.npz`` files are read
without pickle, their headers checked before any data is read.
"""

from __future__ import annotations

import io
import stat
import zipfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddpmkit.config.data import is_fashion_mnist
from ddpmkit.data import DataConfig, load_dataset
from ddpmkit.data.npz import check_image_header, read_npy, read_npy_header
from ddpmkit.errors import ConfigError, DataError
from ddpmkit.metrics.extractors import FeatureExtractor, extract_features, load_extractor
from ddpmkit.metrics.frechet import GaussianStats
from ddpmkit.metrics.presets import paper_warning, preset_features

STATS_KEYS = ("mu", "sigma")
MAX_STATS_DIMS = 16_384  # sigma of 16384² float64 is 2 GiB; Inception's is 2048
_DEFAULT_SIZE = {"inception": 299, "digits": 16, "fashion-mnist": 28}  # each one's input size
_DEFAULT_CHANNELS = {"inception": 3, "digits": 1, "fashion-mnist": 1}


@dataclass
class FidRequest:
    features: str | None = None  # None: inception (or nothing, for two statistics files)
    feature_weights: str | Path | None = None
    batch_size: int = 500
    image_size: int | None = None
    channels: int | None = None
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    k: int = 3
    seed: int = 0
    cache_dir: Path | None = None
    device: str = "cpu"
    preset: str | None = None


@dataclass
class SideInfo:
    source: str
    kind: str  # "images", "statistics" or "images+statistics"
    n_images: int | None
    dims: int | None = None


@dataclass
class FidReport:
    a: SideInfo
    b: SideInfo
    features: str | None
    extractor_fingerprint: str | None
    image_size: int | None
    channels: int | None
    fid: float
    kid_mean: float | None = None
    kid_std: float | None = None
    kid_subsets: int | None = None
    kid_subset_size: int | None = None
    precision: float | None = None
    recall: float | None = None
    k: int | None = None
    preset: str | None = None
    warnings: list[str] = field(default_factory=list)
    stats: tuple[GaussianStats, GaussianStats] | None = field(default=None, repr=False)
    """The statistics FID was computed from (A, B); not part of :meth:`to_dict`."""

    def lines(self) -> list[str]:
        """The report as ``ddpm fid`` prints it: the two sides, the features, the scores."""
        out = []
        for name, side in (("A", self.a), ("B", self.b)):
            held = f"{side.n_images} images" if side.n_images is not None else "no images used"
            out.append(f"{name}: {side.source} ({side.kind}; {held}; {side.dims}-d features)")
        if self.features is not None:
            out.append(
                f"features: {self.features} ({self.extractor_fingerprint}), images at "
                f"{self.image_size}x{self.image_size}, {self.channels} channel(s)"
            )
        out.append(f"FID        {self.fid:.4f}")
        if self.kid_mean is not None:
            out.append(
                f"KID        {self.kid_mean:.6f} ± {self.kid_std:.6f} "
                f"({self.kid_subsets} subsets of {self.kid_subset_size})"
            )
        if self.precision is not None:
            out += [f"precision  {self.precision:.4f}", f"recall     {self.recall:.4f}"]
        return out

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "stats"}
        out["a"], out["b"] = asdict(self.a), asdict(self.b)
        return out


@dataclass
class _Side:
    spec: str
    stats: GaussianStats | None  # stored statistics (n = 0: unknown)
    has_images: bool
    native_size: int | None
    images: torch.Tensor | None = None
    features: np.ndarray | None = None

    @property
    def kind(self) -> str:
        if self.stats is not None:
            return "images+statistics" if self.has_images else "statistics"
        return "images"


# --------------------------------------------------------------------------------------------
# statistics files


def _npz_members(path: Path) -> dict[str, zipfile.ZipInfo] | None:
    """The members of a ``.npz`` (names without ``.npy``), or None if it is not a zip file."""
    try:
        with zipfile.ZipFile(path) as archive:
            return {
                (i.filename[:-4] if i.filename.endswith(".npy") else i.filename): i
                for i in archive.infolist()
            }
    except (zipfile.BadZipFile, OSError, ValueError):
        return None


def _stats_header(ndim: int, dims: int | None):
    """The header check of ``mu`` (``ndim`` 1) or ``sigma`` (2, of ``dims`` dimensions)."""

    def check(where: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        if dtype.hasobject or dtype.kind != "f":
            raise DataError(f"{where}: expected a float array, got dtype {dtype}")
        if len(shape) != ndim or any(n != shape[0] for n in shape):
            want = "(D,)" if ndim == 1 else "(D, D)"
            raise DataError(f"{where}: expected shape {want}, got {shape}")
        if not 1 <= shape[0] <= MAX_STATS_DIMS:
            raise DataError(f"{where}: {shape[0]} dimensions, expected 1..{MAX_STATS_DIMS}")
        if dims is not None and shape[0] != dims:
            raise DataError(f"{where}: shape {shape} does not fit 'mu' of {dims} dimensions")

    return check


def _read_stats_member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, where: str, ndim: int, dims: int | None
) -> np.ndarray:
    """A float array of a statistics ``.npz``, read by the data package's ``.npy`` reader: the
    header checked before anything is allocated, the declared size against the stored bytes."""
    with archive.open(info) as fp:
        array = read_npy(fp, info.file_size, where, _stats_header(ndim, dims))
    array = np.asarray(array, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise DataError(f"{where}: holds NaN or infinite values")
    return array


def read_statistics(path: str | Path) -> GaussianStats:
    """``mu`` and ``sigma`` of a statistics ``.npz`` (pytorch-fid's, OpenAI's or ours) as
    float64 :class:`GaussianStats` (``n`` from an ``n`` member when there is one, else 0)."""
    path = Path(path)
    members = _npz_members(path)
    if members is None:
        raise DataError(f"'{path}' is not a readable .npz file")
    missing = [k for k in STATS_KEYS if k not in members]
    if missing:
        raise DataError(
            f"'{path}' holds no FID statistics: '{missing[0]}' is missing (found "
            f"{', '.join(sorted(members)) or 'nothing'}); expected 'mu' (D,) and 'sigma' (D, D)"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            mu = _read_stats_member(archive, members["mu"], f"'{path}' [mu]", 1, None)
            sigma = _read_stats_member(archive, members["sigma"], f"'{path}' [sigma]", 2, len(mu))
            n = 0
            if "n" in members:
                with archive.open(members["n"]) as fp:
                    value = np.lib.format.read_array(fp, allow_pickle=False)
                if value.shape == () and value.dtype.kind in "iu" and int(value) >= 0:
                    n = int(value)
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(f"cannot read '{path}': {' '.join(str(e).split())}") from None
    return GaussianStats(mu, sigma, n)


def save_statistics(path: str | Path, stats: GaussianStats) -> Path:
    """Write ``mu``, ``sigma`` (float64, pytorch-fid's layout) and ``n`` to ``path``."""
    from ddpmkit.fileio import atomic_write_bytes

    buffer = io.BytesIO()
    np.savez(buffer, mu=stats.mean, sigma=stats.cov, n=np.int64(stats.n))
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)


def _native_size(path: Path, members: dict[str, zipfile.ZipInfo]) -> int | None:
    """The side of the ``arr_0`` images of an ``.npz``, read from its header; None if unclear."""
    if "arr_0" not in members:
        return None
    try:
        with zipfile.ZipFile(path) as archive, archive.open(members["arr_0"]) as fp:
            shape, _, _ = read_npy_header(
                fp, members["arr_0"].file_size, str(path), check_image_header
            )
    except (DataError, OSError, ValueError, zipfile.BadZipFile):
        return None
    return shape[1] if len(shape) in (3, 4) and shape[1] == shape[2] else None


def _open_side(spec: str) -> _Side:
    """What a side holds, from a look at the file only (no images decoded yet)."""
    path = Path(spec).expanduser()
    try:
        is_npz = stat.S_ISREG(path.stat().st_mode) and path.suffix.lower() == ".npz"
    except OSError:
        is_npz = False
    if not is_npz:
        return _Side(spec, None, True, None)
    members = _npz_members(path)
    if members is None or not any(k in members for k in STATS_KEYS):
        return _Side(spec, None, True, _native_size(path, members) if members else None)
    stats = read_statistics(path)
    has_images = "arr_0" in members
    return _Side(spec, stats, has_images, _native_size(path, members) if has_images else None)


# --------------------------------------------------------------------------------------------
# the computation


def _check_source(spec: str) -> None:
    """A missing file or folder is reported before any extractor is loaded."""
    if spec == "digits" or spec.startswith("hf:") or is_fashion_mnist(spec):
        return
    head, sep, _ = spec.rpartition(":")  # a CIFAR folder's PATH:split
    if Path(spec).expanduser().exists() or (sep and Path(head).expanduser().is_dir()):
        return
    raise DataError(
        f"'{spec}' not found: give an .npz of images (arr_0) or of statistics (mu, sigma), an "
        "image folder, a CIFAR or idx folder, digits, fashion-mnist[:test] or hf:NAME"
    )


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def compute_fid(a: str, b: str, request: FidRequest, progress: bool = True) -> FidReport:
    """FID of ``a`` against ``b`` (and KID, precision and recall where both hold images)."""
    from ddpmkit.evaluation.scores import score_sets
    from ddpmkit.metrics.reference import reference_features

    if request.batch_size < 1:
        raise ConfigError(f"--batch must be >= 1, got {request.batch_size}")
    features = preset_features(request.preset, request.features)
    sides = [_open_side(a), _open_side(b)]
    # a stored-statistics side needs its images only for KID/PR, i.e. when the other has some
    needs_images = [
        s.stats is None or (s.has_images and other.has_images)
        for s, other in zip(sides, sides[::-1], strict=True)
    ]
    extractor: FeatureExtractor | None = None
    size = channels = None
    if any(needs_images):
        features = features or "inception"
        size = request.image_size or next(
            (
                s.native_size
                for s, need in zip(sides, needs_images, strict=True)
                if need and s.native_size
            ),
            _DEFAULT_SIZE[features],
        )
        channels = request.channels or _DEFAULT_CHANNELS[features]
        for side, need in zip(sides, needs_images, strict=True):  # cheap checks before work
            if need:
                _check_source(side.spec)
                DataConfig(source=side.spec, image_size=size, channels=channels).validate()
        extractor = load_extractor(
            features, weights=request.feature_weights, device=_device(request.device)
        )
        for side in sides:
            if side.stats is not None and len(side.stats.mean) != extractor.dims:
                raise ConfigError(
                    f"'{side.spec}' holds statistics of {len(side.stats.mean)}-d features but "
                    f"the {extractor.name} extractor gives {extractor.dims}-d ones: statistics "
                    "must come from the extractor used for the other side"
                )
        for i, (side, need) in enumerate(zip(sides, needs_images, strict=True)):
            if not need:
                continue
            config = DataConfig(source=side.spec, image_size=size, channels=channels)
            side.images = load_dataset(config, progress=progress).images_uint8
            if len(side.images) < 2:
                raise DataError(f"'{side.spec}' holds {len(side.images)} image: FID needs >= 2")
            if i == 1:  # the reference: cached
                side.features, _ = reference_features(
                    side.images, extractor, request.cache_dir, request.batch_size, progress
                )
            else:
                side.features = extract_features(
                    extractor, side.images, batch_size=request.batch_size, progress=progress
                )
    stats = [s.stats if s.stats is not None else GaussianStats.of(s.features) for s in sides]
    if len(stats[0].mean) != len(stats[1].mean):
        raise ConfigError(
            f"'{a}' and '{b}' hold statistics of {len(stats[0].mean)}-d and "
            f"{len(stats[1].mean)}-d features: both must come from the same extractor"
        )
    report = FidReport(
        a=_info(sides[0], stats[0]),
        b=_info(sides[1], stats[1]),
        features=features if extractor is not None else None,
        extractor_fingerprint=extractor.fingerprint if extractor is not None else None,
        image_size=size,
        channels=channels,
        fid=float("nan"),
        preset=request.preset,
        stats=(stats[0], stats[1]),
    )
    both = all(s.features is not None for s in sides)
    scores = score_sets(  # B is the reference, A the generated set (as in ddpm eval)
        stats[1],
        stats[0],
        sides[1].features if both else None,
        sides[0].features if both else None,
        kid_subsets=request.kid_subsets,
        kid_subset_size=request.kid_subset_size,
        seed=request.seed,
        k=request.k,
    )
    report.fid = scores.fid
    if scores.kid is not None:
        kid = scores.kid
        report.kid_mean, report.kid_std = kid.mean, kid.std
        report.kid_subsets, report.kid_subset_size = kid.subsets, kid.subset_size
    if scores.precision_recall is not None:
        pr = scores.precision_recall
        report.precision, report.recall, report.k = pr.precision, pr.recall, pr.k
    elif both:
        report.warnings.append(
            f"no precision/recall: it needs more than k = {request.k} images on each side"
        )
    if request.preset == "paper":
        for name, st in (("A", stats[0]), ("B", stats[1])):
            if st.n:
                message = paper_warning(f"side {name}", st.n)
                if message:
                    report.warnings.append(message)
    return report


def _info(side: _Side, stats: GaussianStats) -> SideInfo:
    n = len(side.images) if side.images is not None else None
    return SideInfo(side.spec, side.kind, n, len(stats.mean))
