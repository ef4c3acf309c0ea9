"""AdamW's step on the CPU: torch's per-parameter loop against one fused kernel, on the default
network (a benchmark, not a test; quiet machine).

    python benchmarks/adam_kernel.py [--repeats 30] [--rounds 5] [--batch 128]

Times the optimizer step alone and the whole training step (forward under the default's bf16
autocast, loss, backward, clipping, AdamW), the two kernels interleaved round by round (ABAB) so
that a change in the machine's speed hits both; medians over rounds of the median of
``--repeats`` steps.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ddpmkit.config import RunConfig
from ddpmkit.nn import UNet


def step_times(fused: bool | None, batch: int, repeats: int) -> tuple[float, float]:
    """(ms per AdamW step, ms per training step) for one kernel."""
    config = RunConfig()
    torch.manual_seed(0)
    model = UNet(config.model).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)
    size = config.data.image_size
    x = torch.rand(batch, config.model.in_channels, size, size) * 2 - 1
    t = torch.randint(0, 1000, (batch,))
    opt_ms, step_ms = [], []
    for i in range(repeats + 3):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, t)
        loss = (out.float() - x).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        before_opt = time.perf_counter()
        optimizer.step()
        end = time.perf_counter()
        if i >= 3:
            opt_ms.append(1000 * (end - before_opt))
            step_ms.append(1000 * (end - start))
    return statistics.median(opt_ms), statistics.median(step_ms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {"loop": [], "fused": []}
    for _ in range(args.rounds):
        for name, fused in (("loop", None), ("fused", True)):
            results[name].append(step_times(fused, args.batch, args.repeats))
    n_tensors = len(list(UNet(RunConfig().model).parameters()))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
        f"{n_tensors} parameter tensors"
    )
    print("| AdamW kernel | optimizer ms/step | training ms/step | steps/s |")
    print("| --- | ---: | ---: | ---: |")
    for name, rows in results.items():
        opt = statistics.median(r[0] for r in rows)
        step = statistics.median(r[1] for r in rows)
        print(f"| {name} | {opt:.2f} | {step:.1f} | {1000 / step:.2f} |")


if __name__ == "__main__":
    main()
