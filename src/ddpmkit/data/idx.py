"""MNIST-family data in the idx format: MNIST, Fashion-MNIST, KMNIST, EMNIST.

The idx format (LeCun et al., http://yann.lecun.com/exdb/mnist/) is a 4-byte magic number — two
zero bytes, a type code (0x08 unsigned byte, …) and the number of dimensions — then each
dimension as a big-endian uint32, then the values, row-major. Images are
``*-images-idx3-ubyte`` (N × rows × columns), labels ``*-labels-idx1-ubyte`` (N), each gzipped
(``.gz``) or not. The source is

* a folder as the data sets' authors ship them (``train-…``, ``t10k-…``; EMNIST's
  ``emnist-SUBSET-train-…``/``-test-…``), torchvision's download folder (``ROOT/FashionMNIST/raw``,
  or ``ROOT`` itself when it holds one such folder), or Debian's
  ``/usr/share/datasets/fashion-mnist``;
* or the images file itself (its labels file is found by name) — the way to pick one EMNIST
  subset from a folder that holds several;
* or the built-in name ``fashion-mnist`` (:data:`FASHION_MNIST_DIR`, with its class names).

The split is ``train`` unless the source ends in ``:test`` (or ``data.split = "test"``);
``t10k`` files are the test split. EMNIST's images are stored transposed and are turned upright.
Hostile files — a wrong magic number, a type that is not unsigned bytes, dimensions whose
product is beyond :data:`MAX_IDX_BYTES`, data shorter or longer than declared, labels whose count
or range does not match the images — are refused in one line before anything big is allocated.
"""

from __future__ import annotations

import gzip
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ddpmkit.data.dataset import DataConfig, ImageDataset, checked_labels
from ddpmkit.data.imaging import convert_channels, resize_square_float, to_tensor_nchw
from ddpmkit.errors import DataError

FASHION_MNIST = "fashion-mnist"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_INSTALL = "sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
SPLITS = ("train", "test")
MAX_IDX_BYTES = 1 << 32
"""An idx file whose header declares more data than this (4 GiB; the largest real one, EMNIST
ByClass's training images, holds 547 MB) is refused unread."""
UBYTE = 0x08
_CHUNK = 1 << 22
_GZIP_MAGIC = b"\x1f\x8b"
_IMAGES = re.compile(r"^(?P<stem>.*?)(?P<split>train|t10k|test)-images[-.]idx3[-.]ubyte(\.gz)?$")


@dataclass(frozen=True)
class IdxFiles:
    """One split's images file, its labels file (None: unlabelled) and how to read them."""

    images: Path
    labels: Path | None
    split: str
    transposed: bool  # EMNIST stores each image transposed
    class_names: tuple[str, ...] | None

    @property
    def kind(self) -> str:
        if self.class_names == FASHION_MNIST_CLASSES:
            return f"Fashion-MNIST {self.split}"
        name = re.sub(r"-?(train|t10k|test)-images[-.]idx3[-.]ubyte(\.gz)?$", "", self.images.name)
        return f"idx {name + ' ' if name else ''}{self.split}"


def _split_of(match: re.Match) -> str:
    return "train" if match["split"] == "train" else "test"


def _labels_for(images: Path) -> Path | None:
    """The labels file beside ``images``: same name with ``labels-idx1``, gzipped or not."""
    base = re.sub(r"images([-.])idx3", r"labels\1idx1", images.name)
    base = base.removesuffix(".gz")
    for name in (base, base + ".gz"):
        if (images.parent / name).is_file():
            return images.parent / name
    return None


def _names_for(folder: Path) -> tuple[str, ...] | None:
    """Fashion-MNIST's class names for its Debian folder and torchvision's ``FashionMNIST/raw``."""
    if folder.resolve() == FASHION_MNIST_DIR.resolve():
        return FASHION_MNIST_CLASSES
    if folder.name == "raw" and folder.parent.name == "FashionMNIST":
        return FASHION_MNIST_CLASSES
    return None


def _image_files(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if _IMAGES.match(p.name) and p.is_file())
    except OSError:
        return []


def find_idx(folder: Path) -> list[Path] | None:
    """The idx images files of ``folder`` (or of its torchvision ``raw`` folder, or of
    ``folder/*/raw`` when exactly one holds some); None when there are none."""
    for candidate in (folder, folder / "raw"):
        files = _image_files(candidate)
        if files:
            return files
    nested = [p / "raw" for p in sorted(folder.glob("*")) if _image_files(p / "raw")]
    if len(nested) == 1:
        return _image_files(nested[0])
    return None


def choose_files(
    images: list[Path], split: str, *, source: str, names: tuple[str, ...] | None = None
) -> IdxFiles:
    """The files of ``split`` among ``images`` (one data set's images files), or a one-line
    :class:`DataError` naming the choices when a folder holds several data sets (EMNIST)."""
    if split not in SPLITS:
        raise DataError(f"'{source}' is idx data: split must be 'train' or 'test', got {split!r}")
    mine = [p for p in images if _split_of(_IMAGES.match(p.name)) == split]
    unique = {p.name.removesuffix(".gz"): p for p in mine}  # x and x.gz: one data set
    if not unique:
        raise DataError(f"'{source}' holds idx files but none of its {split} split")
    if len(unique) > 1:
        choices = ", ".join(sorted(unique))
        raise DataError(
            f"'{source}' holds several idx data sets ({choices}): give one images file as "
            "the source"
        )
    path = min(mine, key=lambda p: p.suffix == ".gz")  # the uncompressed one when both exist
    stem = _IMAGES.match(path.name)["stem"]
    return IdxFiles(
        images=path,
        labels=_labels_for(path),
        split=split,
        transposed=stem.startswith("emnist-"),
        class_names=names if names is not None else _names_for(path.parent),
    )


def files_of(path: Path, split: str | None, *, source: str) -> IdxFiles:
    """The idx files of a source path: a folder (:func:`find_idx`) or one images file."""
    if path.is_dir():
        images = find_idx(path)
        if images is None:
            raise DataError(f"'{source}' holds no idx images files")
        return choose_files(images, split or "train", source=source)
    match = _IMAGES.match(path.name)
    if match is None:
        raise DataError(f"'{source}' is not an idx images file (*-images-idx3-ubyte[.gz])")
    own = _split_of(match)
    if split is not None and split != own:
        raise DataError(f"'{source}' is the {own} split's file but data.split is '{split}'")
    return choose_files([path], own, source=source)


def is_images_file(path: Path) -> bool:
    return _IMAGES.match(path.name) is not None


def fashion_mnist_folder(source: str) -> Path:
    """The Debian package's folder, or a one-line :class:`DataError` saying how to install it."""
    if not FASHION_MNIST_DIR.is_dir() or find_idx(FASHION_MNIST_DIR) is None:
        raise DataError(
            f"'{source}' reads {FASHION_MNIST_DIR}, which is not installed: run "
            f"`{FASHION_MNIST_INSTALL}` (Debian/Ubuntu), or give the folder of the idx files"
        )
    return FASHION_MNIST_DIR


# ------------------------------------------------------------------------------ reading
def _open(path: Path, where: str):
    try:
        with path.open("rb") as f:
            gzipped = f.read(2) == _GZIP_MAGIC
        return gzip.open(path, "rb") if gzipped else path.open("rb")
    except OSError as e:
        raise DataError(f"{where}: cannot read: {e.strerror or e}") from None


def _read_exactly(stream, size: int, where: str) -> bytearray:
    """``size`` bytes, read in chunks so that a header that lies costs no memory."""
    out = bytearray()
    while len(out) < size:
        chunk = stream.read(min(_CHUNK, size - len(out)))
        if not chunk:
            raise DataError(
                f"{where}: truncated: {len(out)} of the {size} bytes its header declares"
            )
        out += chunk
    return out


def read_idx(path: Path, ndim: int, where: str) -> np.ndarray:
    """The unsigned-byte array of an idx file with ``ndim`` dimensions, checked against its
    header (magic number, type, dimensions, exact length); one-line :class:`DataError` else."""
    stream = _open(path, where)
    try:
        with stream:
            magic = bytes(stream.read(4))
            if len(magic) < 4 or magic[:2] != b"\x00\x00":
                raise DataError(f"{where}: not an idx file (wrong magic number {magic.hex()!r})")
            if magic[2] != UBYTE:
                raise DataError(
                    f"{where}: idx values of type 0x{magic[2]:02x}; images and labels are "
                    "unsigned bytes (0x08)"
                )
            if magic[3] != ndim:
                raise DataError(f"{where}: {magic[3]} dimensions where {ndim} are expected")
            header = bytes(stream.read(4 * ndim))
            if len(header) < 4 * ndim:
                raise DataError(f"{where}: truncated in its header")
            shape = tuple(int(v) for v in np.frombuffer(header, dtype=">u4"))
            size = int(np.prod(shape, dtype=object))
            if size > MAX_IDX_BYTES:
                raise DataError(
                    f"{where}: its header declares {size:,} bytes ({' × '.join(map(str, shape))}), "
                    f"more than the {MAX_IDX_BYTES >> 30} GiB allowed"
                )
            data = _read_exactly(stream, size, where)
            if stream.read(1):
                raise DataError(f"{where}: longer than the {size} bytes its header declares")
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{where}: unreadable ({e})") from None
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def load_idx(files: IdxFiles, cfg: DataConfig, *, source: str, progress: bool) -> ImageDataset:
    """The images (and labels) of ``files``, shaped as ``cfg`` asks."""
    images = read_idx(files.images, 3, f"'{source}' [{files.images.name}]")
    if files.transposed:
        images = images.transpose(0, 2, 1)
    n, rows, cols = images.shape
    if n and rows != cols:
        raise DataError(f"'{source}' [{files.images.name}]: images are {rows}×{cols}, not square")
    labels = None
    if files.labels is not None:
        where = f"'{source}' [{files.labels.name}]"
        values = read_idx(files.labels, 1, where)
        if len(values) != n:
            raise DataError(f"{where}: {len(values)} labels for {n} images")
        if (
            files.class_names is not None
            and values.size
            and int(values.max()) >= len(files.class_names)
        ):
            raise DataError(
                f"{where}: label {int(values.max())} is out of range for "
                f"{len(files.class_names)} classes"
            )
        labels = checked_labels(values.astype(np.int64), n, where)
    arr = convert_channels(images[..., None], cfg.channels)
    arr = resize_square_float(arr, cfg.image_size, progress=progress, desc="resizing")
    tensor = to_tensor_nchw(arr)
    names = list(files.class_names) if labels is not None and files.class_names else None
    return ImageDataset(tensor, source=source, labels=labels, class_names=names, kind=files.kind)
