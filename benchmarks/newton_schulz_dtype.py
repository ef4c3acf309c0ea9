"""Muon's Newton–Schulz iteration on the CPU in bfloat16 and float32, on the hidden matrices of a
config's U-Net (a benchmark, not a test; quiet machine).

    python benchmarks/newton_schulz_dtype.py [--config configs/fashion_mnist_cpu.toml] [--rounds 5]

Times ``ddpmkit.train.muon.orthogonalise`` over every hidden matrix of the network (random
matrices of their shapes), the two dtypes interleaved round by round, at 2 threads and at 1;
medians over rounds of the mean of 10 optimizer steps.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ddpmkit.config import resolve_config
from ddpmkit.nn import UNet
from ddpmkit.train.muon import muon_parameters, orthogonalise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/fashion_mnist_cpu.toml")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    hidden, _ = muon_parameters(UNet(resolve_config(args.config).model))
    torch.manual_seed(0)
    matrices = [torch.randn(p.shape[0], p[0].numel()) for p in hidden]
    print(f"torch {torch.__version__}, {len(matrices)} hidden matrices of {args.config}")
    print("| threads | dtype | ms per optimizer step |")
    print("| ---: | --- | ---: |")
    for threads in (2, 1):
        torch.set_num_threads(threads)
        times: dict[torch.dtype, list[float]] = {torch.bfloat16: [], torch.float32: []}
        for _ in range(args.rounds):
            for dtype, runs in times.items():
                for _ in range(2):  # warm-up
                    [orthogonalise(m, dtype=dtype) for m in matrices]
                start = time.perf_counter()
                for _ in range(10):
                    [orthogonalise(m, dtype=dtype) for m in matrices]
                runs.append((time.perf_counter() - start) / 10 * 1000)
        for dtype, runs in times.items():
            name = str(dtype).removeprefix("torch.")
            print(f"| {threads} | {name} | {statistics.median(runs):.1f} |")


if __name__ == "__main__":
    main()
