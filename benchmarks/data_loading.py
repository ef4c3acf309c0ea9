"""Load time and peak memory of ``load_dataset`` for each kind of source (a benchmark, not a
test).

Builds, in a temporary folder, the same N random 32×32 RGB images (default 50,000, CIFAR's
training set size) as each kind of source: a folder of PNGs, a ``.npz``, an ``hf:`` parquet
folder (needs ``datasets``), CIFAR-10 binary batches and CIFAR-10 python batches. Each load runs
in a fresh subprocess, so its peak resident memory (``VmHWM`` of /proc/self/status; Linux) is
its own; the increase is measured from the process's resident size after importing ddpmkit,
and every load is checked to give the same uint8 tensor. Prints a markdown table.

    python benchmarks/data_loading.py [--n 50000] [--size 32] [--kinds folder,npz,...] [--keep DIR]

The ``hf`` row is measured twice: the first load converts the parquet file into ``datasets``'
arrow cache, later loads memory-map that cache.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

KINDS = ("folder", "npz", "hf", "cifar-bin", "cifar-py")

_CHILD = r"""
import json, os, sys, time, hashlib
import ddpmkit.data
from ddpmkit.data import DataConfig, load_dataset

def status(key):
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over execve from the parent process
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no /proc/self/status: Linux only")

if sys.argv[1].startswith("hf:"):
    import datasets  # imported before the baseline, like ddpmkit itself
base = status("VmRSS")
start = time.perf_counter()
ds = load_dataset(DataConfig(source=sys.argv[1], image_size=int(sys.argv[2]), channels=3),
                  progress=False)
seconds = time.perf_counter() - start
peak = status("VmHWM")
digest = hashlib.sha256(ds.images_uint8.numpy().tobytes()).hexdigest()
print(json.dumps({"seconds": seconds, "peak_increase": peak - base, "base": base,
                  "n": len(ds), "bytes": ds.images_uint8.numel(), "sha256": digest,
                  "labels": ds.labels is not None}))
"""


def py2_pickle(d: dict[str, object]) -> bytes:
    """A protocol-2 pickle laid out as Python 2's cPickle wrote the real CIFAR python batches
    (str keys and data, numpy 1.x's ``numpy.core.multiarray``), as large as the real files;
    values: 2-D uint8 arrays, lists of ints or of str."""

    def string(s: bytes) -> bytes:
        return (b"U" + bytes([len(s)]) if len(s) < 256 else b"T" + struct.pack("<i", len(s))) + s

    def value(v: object) -> bytes:
        if isinstance(v, np.ndarray):
            shape = b"".join(b"J" + struct.pack("<i", n) for n in v.shape)
            return (
                b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85"
                + string(b"b")
                + b"\x87R(K\x01"
                + shape
                + b"\x86cnumpy\ndtype\n"
                + string(b"u1")
                + b"K\x00K\x01\x87R(K\x03"
                + string(b"|")
                + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89"
                + string(np.ascontiguousarray(v).tobytes())
                + b"tb"
            )
        if isinstance(v, list):
            return b"](" + b"".join(value(x) for x in v) + b"e"
        if isinstance(v, int):
            return b"J" + struct.pack("<i", v)
        return string(str(v).encode("latin-1"))

    body = b"".join(string(k.encode()) + value(v) for k, v in d.items())
    return b"\x80\x02}(" + body + b"u."


def build(kind: str, root: Path, images: np.ndarray, labels: np.ndarray) -> str:
    """Write the source of ``kind`` under ``root``; return its ``data.source`` string."""
    n = len(images)
    if kind == "folder":
        folder = root / "folder"
        for i, img in enumerate(images):
            sub = folder / f"{i // 1000:03d}"
            if i % 1000 == 0:
                sub.mkdir(parents=True)
            Image.fromarray(img).save(sub / f"{i:05d}.png", compress_level=1)
        return str(folder)
    if kind == "npz":
        np.savez(root / "images.npz", images, labels)
        return str(root / "images.npz")
    if kind == "hf":
        import datasets

        def png(img: np.ndarray) -> bytes:
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG", compress_level=1)
            return buf.getvalue()

        features = datasets.Features(
            {"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)}
        )
        table = datasets.Dataset.from_dict(
            {"image": [{"bytes": png(a), "path": None} for a in images], "label": labels},
            features=features,
        )
        (root / "hf").mkdir()
        table.to_parquet(str(root / "hf" / "train.parquet"))
        return f"hf:{root / 'hf'}"
    rows = images.transpose(0, 3, 1, 2).reshape(n, -1)  # R plane, G plane, B plane
    batches = np.array_split(np.arange(n), 5)
    if kind == "cifar-bin":
        folder = root / "cifar-10-batches-bin"
        folder.mkdir()
        for b, index in enumerate(batches, 1):
            records = np.concatenate([labels[index, None].astype(np.uint8), rows[index]], axis=1)
            (folder / f"data_batch_{b}.bin").write_bytes(records.tobytes())
        (folder / "test_batch.bin").write_bytes(records[:10].tobytes())
        (folder / "batches.meta.txt").write_text("\n".join(f"c{k}" for k in range(10)) + "\n")
        return str(folder)
    if kind == "cifar-py":
        folder = root / "cifar-10-batches-py"
        folder.mkdir()
        for b, index in enumerate(batches, 1):
            batch = {"data": rows[index], "labels": labels[index].tolist()}
            (folder / f"data_batch_{b}").write_bytes(py2_pickle(batch))
        (folder / "test_batch").write_bytes(py2_pickle(batch))
        meta = {"label_names": [f"c{k}" for k in range(10)]}
        (folder / "batches.meta").write_bytes(py2_pickle(meta))
        return str(folder)
    raise ValueError(kind)


def measure(source: str, size: int, env: dict[str, str]) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, source, str(size)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--size", type=int, default=32, help="image side (sources and loads)")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--keep", type=Path, help="build in DIR and keep it (default: a temp dir)")
    args = parser.parse_args()
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = set(kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown kinds {sorted(unknown)}; choose from {', '.join(KINDS)}")
    if "hf" in kinds:
        try:
            import datasets  # noqa: F401
        except ImportError:
            print("datasets is not installed: skipping the hf row", file=sys.stderr)
            kinds.remove("hf")
    if args.size != 32:
        kinds = [k for k in kinds if not k.startswith("cifar")]

    root = Path(args.keep or tempfile.mkdtemp(prefix="ddpmkit-data-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "HF_DATASETS_CACHE": str(root / "hf-cache"),
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    os.environ.update({k: env[k] for k in ("HF_DATASETS_CACHE",)})
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.n, args.size, args.size, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, args.n)
    rows, digests = [], set()
    try:
        for kind in kinds:
            start = time.perf_counter()
            source = build(kind, root, images, labels)
            built = time.perf_counter() - start
            on_disk = sum(f.stat().st_size for f in Path(source.removeprefix("hf:")).rglob("*"))
            if Path(source).is_file():
                on_disk = Path(source).stat().st_size
            runs = [("hf (first load)", "hf (cached)")] if kind == "hf" else [(kind,)]
            for name in runs[0]:
                r = measure(source, args.size, env)
                digests.add(r["sha256"])
                rows.append((name, on_disk, built, r))
                print(
                    f"{name}: {r['seconds']:.2f} s, +{r['peak_increase'] / 2**20:.0f} MiB",
                    file=sys.stderr,
                )
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    n, size = args.n, args.size
    tensor_mib = n * 3 * size * size / 2**20
    print(
        f"\n{n:,} random {size}x{size} RGB images ({tensor_mib:.0f} MiB as the uint8 tensor); "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']}, Python {platform.python_version()}\n"
    )
    print("| source | on disk | load time | images/s | peak RSS increase | x tensor size |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, on_disk, _built, r in rows:
        peak = r["peak_increase"] / 2**20
        print(
            f"| {name} | {on_disk / 2**20:.0f} MiB | {r['seconds']:.2f} s | "
            f"{r['n'] / r['seconds']:,.0f} | {peak:.0f} MiB | {peak / tensor_mib:.1f} |"
        )
    print("\nall loads identical:", len(digests) == 1)


if __name__ == "__main__":
    main()
