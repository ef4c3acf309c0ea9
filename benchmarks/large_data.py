"""Training from data larger than memory (issue 11): resident memory and step rate (a benchmark).

Writes a ``.npz`` of N random 64×64 RGB images part by part (never holding it whole), then
trains the same small U-Net from it twice, each in its own process:

* ``memory``: ``data.cache=off data.hold=device`` — the whole array decoded into memory (the
  path every run took before the cache);
* ``stream``: ``data.cache=on data.hold=stream`` — decoded once into the disk cache (timed
  separately), then batches read by positioned reads.

For each it reports the peak resident set size of the training process (``ru_maxrss``), the
images/s of the logged steps (metrics.jsonl, the first interval left out as warm-up) and the
load time. Needs N·12 KiB of disk twice (12.3 GB each for the default million images).

    python benchmarks/large_data.py [--count 1000000] [--steps 40] [--workdir /tmp/large-data]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

SIZE = 64
MODEL = [
    "data.image_size=64",
    "data.channels=3",
    "model.in_channels=3",
    "model.base_channels=32",
    "model.channel_mults=1,2,2,2",
    "model.blocks_per_resolution=1",
    "model.attention=none,none,none,none",
    "model.mid_attention=none",
    "model.dropout=0",
    "train.batch_size=32",
    "train.sample_every=0",
    "train.checkpoint_every=0",
    "sample.num_samples=1",
    "sample.steps=1",
]


def write_npz(path: Path, count: int, seed: int = 0, part: int = 8192) -> float:
    """A stored (uncompressed) ``.npz`` holding ``arr_0`` of shape (count, 64, 64, 3), written
    part by part; returns the seconds taken."""
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        with archive.open("arr_0.npy", "w", force_zip64=True) as member:
            header = {"descr": "|u1", "fortran_order": False, "shape": (count, SIZE, SIZE, 3)}
            np.lib.format.write_array_header_2_0(member, header)
            for done in range(0, count, part):
                n = min(part, count - done)
                # smooth-ish images: a random colour per image plus noise, as uint8
                base = rng.integers(0, 256, (n, 1, 1, 3), dtype=np.uint8)
                noise = rng.integers(0, 32, (n, SIZE, SIZE, 3), dtype=np.uint8)
                member.write((base + noise).tobytes())
    return time.perf_counter() - start


def train(npz: Path, out: Path, mode: str, steps: int, cache: Path) -> dict:
    overrides = [f"data.source={npz}", *MODEL, f"train.steps={steps}", "train.log_every=10"]
    if mode == "memory":
        overrides += ["data.cache=off", "data.hold=device"]
    else:
        overrides += ["data.cache=on", "data.hold=stream"]
    code = (
        "import resource, sys, time\n"
        "from ddpmkit.config import resolve_config\n"
        "from ddpmkit.train import Trainer\n"
        "t = time.perf_counter()\n"
        f"config = resolve_config(overrides={overrides!r})\n"
        f"trainer = Trainer(config, {str(out)!r}, progress=False)\n"
        "load = time.perf_counter() - t\n"
        "print('data:', trainer.dataset_description, file=sys.stderr)\n"
        "trainer.train()\n"
        "print(load, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    env = {**os.environ, "DDPMKIT_CACHE": str(cache)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode:
        raise SystemExit(f"{mode} run failed:\n{done.stderr[-3000:]}")
    load_s, maxrss_kib = done.stdout.split()[-2:]
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["images_per_s"] for r in records[1:]]  # the first interval includes warm-up
    line = next(x for x in done.stderr.splitlines() if x.startswith("data:"))
    return {
        "mode": mode,
        "load_s": float(load_s),
        "peak_rss_gib": int(maxrss_kib) / 2**20,
        "images_per_s": float(np.median(rates)),
        "data": line,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/large-data"))
    parser.add_argument("--keep", action="store_true", help="keep the npz and the cache")
    args = parser.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    npz, cache = work / f"images-{args.count}.npz", work / "cache"
    if not npz.exists():
        print(f"writing {npz} ...", flush=True)
        print(f"  {write_npz(npz, args.count):.1f} s, {npz.stat().st_size / 2**30:.2f} GiB")
    shutil.rmtree(cache, ignore_errors=True)
    results = []
    for mode in ("stream", "memory", "stream"):  # the second stream run finds the cache
        run = work / f"run-{mode}-{len(results)}"
        shutil.rmtree(run, ignore_errors=True)
        print(f"training ({mode}) ...", flush=True)
        results.append(train(npz, run, mode, args.steps, cache))
        print(f"  {results[-1]}", flush=True)
    print(
        f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{args.count:,} images of 64×64×3, {args.steps} steps of batch 32\n"
    )
    print("| path | load s | peak RSS GiB | train img/s |")
    print("| --- | --- | --- | --- |")
    names = ["stream (cache built)", "in memory", "stream (cache found)"]
    for name, r in zip(names, results, strict=True):
        print(f"| {name} | {r['load_s']:.1f} | {r['peak_rss_gib']:.2f} | {r['images_per_s']:.1f} |")
    ratio = results[2]["images_per_s"] / results[1]["images_per_s"]
    print(f"\nstreamed / in-memory step rate: {ratio:.3f}")
    if not args.keep:
        shutil.rmtree(cache, ignore_errors=True)
        npz.unlink()


if __name__ == "__main__":
    main()
