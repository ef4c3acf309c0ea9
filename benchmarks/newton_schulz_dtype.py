"""Muon's Newton–Schulz iteration on the CPU in bfloat16 and float32, on the hidden matrices of a
config's U-Net (a benchmark, not a test; quiet machine).

    python benchmarks/newton_schulz_dtype.py [--config configs/fashion_mnist_cpu.toml] [--rounds 5]

Times ``ddpmkit.train.muon.orthogonalise`` over every hidden matrix of the network (random
matrices of their shapes), the two dtypes interleaved round by round, at 2 threads and at 1;
medians over rounds of the mean of 10 optimizer steps. A third row iterates the matrices of one
shape as one batch (``torch.baddbmm``), in float32: what batching by shape would save.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch

from ddpmkit.config import resolve_config
from ddpmkit.nn import UNet
from ddpmkit.train.muon import NEWTON_SCHULZ, NEWTON_SCHULZ_STEPS, muon_parameters, orthogonalise


def orthogonalise_batch(stack: torch.Tensor) -> torch.Tensor:
    """``orthogonalise`` in float32 on a batch of wide matrices of one shape (B, m, n), m ≤ n."""
    a, b, c = NEWTON_SCHULZ
    x = stack / stack.norm(dim=(1, 2), keepdim=True).clamp(min=1e-7)
    for _ in range(NEWTON_SCHULZ_STEPS):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/fashion_mnist_cpu.toml")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    hidden, _ = muon_parameters(UNet(resolve_config(args.config).model))
    torch.manual_seed(0)
    matrices = [torch.randn(p.shape[0], p[0].numel()) for p in hidden]
    by_shape: dict[tuple[int, int], list[torch.Tensor]] = defaultdict(list)
    for m in matrices:
        wide = m.T if m.size(0) > m.size(1) else m
        by_shape[tuple(wide.shape)].append(wide)
    stacks = [torch.stack(group) for group in by_shape.values()]
    print(
        f"torch {torch.__version__}, {len(matrices)} hidden matrices of {args.config} "
        f"in {len(stacks)} shapes"
    )
    batched = torch.cat([orthogonalise_batch(s).flatten() for s in stacks])
    one_by_one = torch.cat(
        [
            torch.stack([orthogonalise(w, dtype=torch.float32) for w in g]).flatten()
            for g in by_shape.values()
        ]
    )
    gap = (batched - one_by_one).abs().max().item()
    print(f"batched against one by one (float32): largest difference {gap:.1e}")
    print("| threads | iteration | ms per optimizer step |")
    print("| ---: | --- | ---: |")
    for threads in (2, 1):
        torch.set_num_threads(threads)
        ways = {
            "bfloat16": lambda: [orthogonalise(m, dtype=torch.bfloat16) for m in matrices],
            "float32": lambda: [orthogonalise(m, dtype=torch.float32) for m in matrices],
            "float32, batched by shape": lambda: [orthogonalise_batch(s) for s in stacks],
        }
        times: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(args.rounds):
            for name, way in ways.items():
                for _ in range(2):  # warm-up
                    way()
                start = time.perf_counter()
                for _ in range(10):
                    way()
                times[name].append((time.perf_counter() - start) / 10 * 1000)
        for name, runs in times.items():
            print(f"| {threads} | {name} | {statistics.median(runs):.1f} |")


if __name__ == "__main__":
    main()
