"""CIFAR-10/100 as distributed: binary and python batches, splits, labels, class names, and the
restricted unpickler refusing hostile pickles. Fixtures are tiny files written here."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpmkit.data import DataConfig, load_dataset, safe_pickle
from ddpmkit.errors import ConfigError, DataError

CIFAR10_NAMES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
CIFAR100_NAMES = [f"class{k:02d}" for k in range(100)]
PER_BATCH = 3  # images per data batch in the fixtures


def _load(source, **kw):
    kw.setdefault("image_size", 32)
    kw.setdefault("channels", 3)
    return load_dataset(DataConfig(source=str(source), **kw), progress=False)


def _images(n: int, seed: int) -> np.ndarray:
    """``n`` random CIFAR rows: (n, 3072) uint8, channel-major (R plane, G plane, B plane)."""
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def _nhwc(rows: np.ndarray) -> np.ndarray:
    return rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def _py2_pickle(d: dict[str, object]) -> bytes:
    """A protocol-2 pickle laid out as Python 2's cPickle wrote the real CIFAR files: str
    (SHORT_BINSTRING/BINSTRING) keys and data, numpy 1.x's ``numpy.core.multiarray``."""

    def string(s: bytes) -> bytes:
        if len(s) < 256:
            return b"U" + bytes([len(s)]) + s
        return b"T" + struct.pack("<i", len(s)) + s

    def value(v: object) -> bytes:
        if isinstance(v, np.ndarray):
            return (
                b"cnumpy.core.multiarray\n_reconstruct\n"
                + b"cnumpy\nndarray\n"
                + b"K\x00\x85"  # (0,)
                + string(b"b")
                + b"\x87R"  # TUPLE3, REDUCE
                + b"(K\x01"  # MARK, version 1
                + b"".join(b"J" + struct.pack("<i", n) for n in v.shape)
                + (b"\x86" if v.ndim == 2 else b"\x85")
                + b"cnumpy\ndtype\n"
                + string(b"u1")
                + b"K\x00K\x01\x87R"
                + b"(K\x03"
                + string(b"|")
                + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"  # dtype __setstate__
                + b"\x89"  # False: not Fortran order
                + string(v.tobytes())
                + b"tb"  # TUPLE, BUILD
            )
        if isinstance(v, list):
            return b"](" + b"".join(value(x) for x in v) + b"e"
        if isinstance(v, int):
            return b"J" + struct.pack("<i", v)
        if isinstance(v, str):
            return string(v.encode("latin-1"))
        raise TypeError(type(v))

    body = b"".join(string(k.encode()) + value(v) for k, v in d.items())
    return b"\x80\x02}(" + body + b"u."


def _py3_pickle(d: dict[str, object], *, bytes_keys: bool) -> bytes:
    """``pickle.dumps`` at protocol 2, keys as bytes (what ``encoding='bytes'`` shows for the
    real files) or str."""
    return pickle.dumps({(k.encode() if bytes_keys else k): v for k, v in d.items()}, protocol=2)


def write_cifar(root: Path, kind: str, style: str = "py2") -> tuple[np.ndarray, np.ndarray]:
    """A tiny CIFAR folder of ``kind`` (cifar-10-batches-bin, cifar-100-binary,
    cifar-10-batches-py, cifar-100-python); returns the train rows and labels."""
    root.mkdir(parents=True, exist_ok=True)
    ten = kind.startswith("cifar-10-")
    classes = 10 if ten else 100
    files = [f"data_batch_{i}" for i in range(1, 6)] if ten else ["train"]
    per_file = PER_BATCH if ten else 5 * PER_BATCH
    all_rows, all_labels = [], []
    for split_files, seed in ((files, 0), (["test_batch"] if ten else ["test"], 100)):
        for j, name in enumerate(split_files):
            rows = _images(per_file, seed + j)
            labels = np.random.default_rng(seed + j + 50).integers(0, classes, per_file)
            coarse = labels // 5
            if seed == 0:
                all_rows.append(rows)
                all_labels.append(labels)
            if kind.endswith(("bin", "binary")):
                head = [labels[:, None]] if ten else [coarse[:, None], labels[:, None]]
                records = np.concatenate([*(h.astype(np.uint8) for h in head), rows], axis=1)
                (root / f"{name}.bin").write_bytes(records.tobytes())
            else:
                key = "labels" if ten else "fine_labels"
                d = {"batch_label": f"batch {j}", key: [int(x) for x in labels], "data": rows}
                if not ten:
                    d["coarse_labels"] = [int(x) for x in coarse]
                if style == "py2":
                    blob = _py2_pickle(d)
                else:
                    blob = _py3_pickle(d, bytes_keys=style == "bytes")
                (root / name).write_bytes(blob)
    names = CIFAR10_NAMES if ten else CIFAR100_NAMES
    if kind == "cifar-10-batches-bin":
        (root / "batches.meta.txt").write_text("\n".join(names) + "\n\n")
    elif kind == "cifar-100-binary":
        (root / "fine_label_names.txt").write_text("\n".join(names) + "\n")
        (root / "coarse_label_names.txt").write_text("\n".join(map(str, range(20))) + "\n")
    else:
        key = "label_names" if ten else "fine_label_names"
        meta = {key: names, "num_cases_per_batch": PER_BATCH}
        blob = _py2_pickle(meta) if style == "py2" else _py3_pickle(meta, bytes_keys=True)
        (root / ("batches.meta" if ten else "meta")).write_bytes(blob)
    return np.concatenate(all_rows), np.concatenate(all_labels)


KINDS = ["cifar-10-batches-bin", "cifar-100-binary", "cifar-10-batches-py", "cifar-100-python"]


@pytest.mark.parametrize("kind", KINDS)
def test_cifar_train_split_exact(tmp_path, kind):
    rows, labels = write_cifar(tmp_path / kind, kind)
    ds = _load(tmp_path / kind)
    assert ds.images_uint8.shape == (5 * PER_BATCH, 3, 32, 32)
    assert np.array_equal(ds.images_uint8.permute(0, 2, 3, 1).numpy(), _nhwc(rows))
    assert ds.labels.dtype == torch.int64 and np.array_equal(ds.labels.numpy(), labels)
    names = CIFAR10_NAMES if "-10-" in kind else CIFAR100_NAMES
    assert ds.class_names == names
    assert f"{len(names)} classes" in ds.describe() and "train" in ds.describe()


@pytest.mark.parametrize("style", ["py2", "bytes", "str"])
def test_cifar_python_pickle_styles(tmp_path, style):
    """Python 2's str pickles (the real files), and Python 3 pickles with bytes or str keys."""
    rows, labels = write_cifar(tmp_path / "py", "cifar-10-batches-py", style)
    ds = _load(tmp_path / "py")
    assert np.array_equal(ds.images_uint8.permute(0, 2, 3, 1).numpy(), _nhwc(rows))
    assert np.array_equal(ds.labels.numpy(), labels) and ds.class_names == CIFAR10_NAMES


def test_binary_and_python_versions_agree(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-bin", "cifar-10-batches-bin")
    write_cifar(tmp_path / "cifar-10-batches-py", "cifar-10-batches-py")
    for split in ("train", "test"):
        a = _load(f"{tmp_path / 'cifar-10-batches-bin'}:{split}", image_size=16, channels=1)
        b = _load(tmp_path / "cifar-10-batches-py", split=split, image_size=16, channels=1)
        assert torch.equal(a.images_uint8, b.images_uint8) and torch.equal(a.labels, b.labels)
        assert a.images_uint8.shape[1:] == (1, 16, 16)


def test_split_suffix_and_field(tmp_path):
    root = tmp_path / "cifar-100-python"
    write_cifar(root, "cifar-100-python")
    test = _load(f"{root}:test")
    assert len(test) == 5 * PER_BATCH and "test" in test.describe()
    assert torch.equal(test.images_uint8, _load(root, split="test").images_uint8)
    assert not torch.equal(test.images_uint8, _load(f"{root}:train").images_uint8)
    with pytest.raises(DataError, match="give one of them"):
        _load(f"{root}:test", split="train")
    with pytest.raises(DataError, match="split must be 'train' or 'test'"):
        _load(root, split="validation")
    with pytest.raises(ConfigError):
        _load(root, split="")


def test_parent_folder_names_the_cifar_folder(tmp_path):
    write_cifar(tmp_path / "data" / "cifar-10-batches-py", "cifar-10-batches-py")
    with pytest.raises(DataError, match="cifar-10-batches-py' as the source"):
        _load(tmp_path / "data")


def test_missing_and_damaged_files(tmp_path):
    root = tmp_path / "cifar-10-batches-bin"
    write_cifar(root, "cifar-10-batches-bin")
    (root / "data_batch_3.bin").unlink()
    with pytest.raises(DataError, match="lacks data_batch_3.bin of its train split"):
        _load(root)
    assert len(_load(f"{root}:test")) == 3  # the test split is complete
    (root / "test_batch.bin").write_bytes(b"\x00" * 3072)
    with pytest.raises(DataError, match="not a whole number of 3073-byte"):
        _load(f"{root}:test")
    (root / "test_batch.bin").write_bytes(bytes([10]) + b"\x00" * 3072)
    with pytest.raises(DataError, match="label 10 is out of range"):
        _load(f"{root}:test")
    (root / "test_batch.bin").write_bytes(bytes([1]) + b"\x00" * 3072)
    (root / "batches.meta.txt").write_text("cat\ndog\n")
    with pytest.raises(DataError, match="2 class names, expected 10"):
        _load(f"{root}:test")
    (root / "batches.meta.txt").unlink()  # no names: labels only
    ds = _load(f"{root}:test")
    assert ds.class_names is None and ds.labels.tolist() == [1]


# --------------------------------------------------------------------------------------------
# the restricted unpickler


class _Evil:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _python_folder(tmp_path: Path, blob: bytes, name: str = "test_batch") -> Path:
    root = tmp_path / "cifar-10-batches-py"
    write_cifar(root, "cifar-10-batches-py")
    (root / name).write_bytes(blob)
    return root


@pytest.mark.parametrize("name", ["test_batch", "batches.meta"])
def test_hostile_pickle_is_refused_and_never_runs(tmp_path, name):
    marker = tmp_path / "pwned"
    blob = pickle.dumps({b"data": _Evil(f"touch {marker}"), b"labels": [0]}, protocol=2)
    root = _python_folder(tmp_path, blob, name)
    with pytest.raises(DataError, match=r"global '(os|posix)\.system' is not allowed") as e:
        _load(f"{root}:test")
    assert "\n" not in str(e.value) and name in str(e.value)
    assert not marker.exists()


class _Reduce:
    def __init__(self, *reduced) -> None:
        self.reduced = reduced

    def __reduce__(self):
        return self.reduced


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (_Reduce(eval, ("1 + 1",)), "eval' is not allowed"),
        (_Reduce(getattr, (np.ndarray, "tofile")), "getattr' is not allowed"),
        (_Reduce(np.load, ("x.npy",)), "is not allowed"),
        (np.array([object()] * 2, dtype=object), "not allowed|not a plain number type"),
        (np.zeros(3, dtype=[("a", "u1"), ("b", "f4")]), "not a plain number type"),
    ],
)
def test_unpickler_refuses_everything_but_plain_arrays(tmp_path, payload, needle):
    blob = pickle.dumps({b"data": payload, b"labels": [0]}, protocol=2)
    with pytest.raises(DataError, match=needle):
        _load(f"{_python_folder(tmp_path, blob)}:test")


def test_unpickler_refuses_sized_allocations_and_other_codecs():
    # _reconstruct(ndarray, (10**12,), b'b'): numpy only ever pickles the (0,) placeholder
    huge = (
        b"\x80\x02cnumpy._core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
        b"\x8a\x05\x00\x10\xa5\xd4\xe8\x85C\x01b\x87R."
    )
    with pytest.raises(DataError, match="unexpected arguments"):
        safe_pickle.loads(huge, "x")
    rot13 = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13\x86R."
    with pytest.raises(DataError, match="latin-1 text only"):
        safe_pickle.loads(rot13, "x")
    with pytest.raises(DataError, match="persistent ids"):
        safe_pickle.loads(b"\x80\x02X\x01\x00\x00\x00aQ.", "x")
    assert safe_pickle.loads(pickle.dumps({b"k": [1, 2.5, "s", (None, True)]}, protocol=2), "x")


@pytest.mark.parametrize(
    ("blob", "needle"),
    [
        (b"", "refused or unreadable pickle"),
        (b"\x80\x02}q\x00(X", "refused or unreadable pickle"),  # truncated
        (b"not a pickle at all", "refused or unreadable pickle"),
        (pickle.dumps([1, 2, 3], protocol=2), "expected a dict"),
        (pickle.dumps({b"labels": [0]}, protocol=2), "no 'data' entry"),
        (pickle.dumps({b"data": np.zeros((1, 3072), np.float32), b"labels": [0]}), "uint8"),
        (pickle.dumps({b"data": np.zeros((1, 100), np.uint8), b"labels": [0]}), "uint8 array"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}), "1 labels"),
        (pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0.5]}), "integers"),
        (pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [-1]}), ">= 0"),
    ],
)
def test_malformed_python_batches(tmp_path, blob, needle):
    with pytest.raises(DataError, match=needle) as e:
        _load(f"{_python_folder(tmp_path, blob)}:test")
    assert "\n" not in str(e.value)


def test_cli_trains_nothing_on_a_hostile_pickle(tmp_path, capsys):
    from ddpmkit.cli import main

    marker = tmp_path / "pwned"
    blob = pickle.dumps({b"data": _Evil(f"touch {marker}"), b"labels": [0]}, protocol=2)
    root = _python_folder(tmp_path, blob, "data_batch_1")
    rc = main(["train", "--data", str(root), "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "is not allowed" in err
    assert not marker.exists()


def test_mutated_pickles_load_or_are_refused(tmp_path):
    """500 random mutations (bit flips, overwrites, truncations, insertions) of a real-layout
    batch: each gives a valid data set or one DataError line, never another exception."""
    root = tmp_path / "cifar-10-batches-py"
    write_cifar(root, "cifar-10-batches-py")
    rows = _images(2, 7)
    seed = _py2_pickle({"batch_label": "b", "labels": [1, 2], "data": rows})
    rng = np.random.default_rng(0)
    outcomes = {"loaded": 0, "refused": 0}
    for _ in range(500):
        blob = bytearray(seed)
        for _ in range(int(rng.integers(1, 4))):
            op, at = int(rng.integers(0, 4)), int(rng.integers(0, len(blob)))
            if op == 0:
                blob[at] ^= 1 << int(rng.integers(0, 8))
            elif op == 1:
                blob[at] = int(rng.integers(0, 256))
            elif op == 2:
                del blob[at:]
            else:
                blob[at:at] = bytes(rng.integers(0, 256, int(rng.integers(1, 5)), dtype=np.uint8))
            if not blob:
                break
        (root / "test_batch").write_bytes(bytes(blob))
        try:
            ds = _load(f"{root}:test")
        except DataError as e:
            assert "\n" not in str(e)
            outcomes["refused"] += 1
        else:
            assert ds.images_uint8.dtype == torch.uint8 and ds.images_uint8.shape[1:] == (3, 32, 32)
            assert len(ds.labels) == len(ds)
            outcomes["loaded"] += 1
    assert outcomes["refused"] > 100 and outcomes["loaded"] > 10
