"""What real images score against the reference at a generator's sample size: the floor of a
Fréchet distance of n samples (a benchmark, not a test).

    python benchmarks/real_floor.py [--data fashion-mnist] [--reference fashion-mnist:test] \
        [--size 28] [--channels 1] [--features fashion-mnist] [--n 1000] [--seeds 0,1,2]

For each seed, ``--n`` images drawn without replacement from ``--data`` (NumPy's
``default_rng(seed).choice``) are scored like ``ddpm fid SAMPLE.npz REFERENCE --features F``:
the distance a perfect generator would get with that many samples. Printed: a markdown table
per seed (FD, KID, precision/recall) and the median FD.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np

from ddpmkit.config import DataConfig
from ddpmkit.data import load_dataset
from ddpmkit.evaluation.fid import FidRequest, compute_fid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--channels", type=int, choices=(1, 3), default=1)
    parser.add_argument("--reference", default="fashion-mnist:test")
    parser.add_argument("--features", default="fashion-mnist")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args(argv)
    data = load_dataset(DataConfig(source=args.data, image_size=args.size, channels=args.channels))
    images = data.images_uint8.permute(0, 2, 3, 1).numpy()  # NHWC, as ddpm fid reads an .npz
    print(f"{len(images)} images of {args.data}; {args.n} per draw against {args.reference}")
    print("| seed | FD | KID | precision / recall |\n| ---: | ---: | ---: | --- |")
    fds = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in [int(s) for s in args.seeds.split(",")]:
            pick = np.random.default_rng(seed).choice(len(images), args.n, replace=False)
            sample = Path(tmp) / f"real_{seed}.npz"
            np.savez(sample, images[pick])
            report = compute_fid(
                str(sample), args.reference, FidRequest(features=args.features), progress=False
            )
            fds.append(report.fid)
            print(
                f"| {seed} | {report.fid:.3f} | {report.kid_mean:.4f} | "
                f"{report.precision:.3f} / {report.recall:.3f} |"
            )
    print(f"median FD {statistics.median(fds):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
