"""The optimizer's step on the CPU: AdamW's per-parameter loop, AdamW's fused kernel and Muon with
AdamW (``train.optimizer=muon``), on the default network or a config's (a benchmark, not a test;
quiet machine).

    python benchmarks/adam_kernel.py [--repeats 30] [--rounds 5] [--batch 128] [--config FILE]

Times the optimizer step alone and the whole training step (forward under the default's bf16
autocast, loss, backward, clipping, the optimizer), the optimizers interleaved round by round
(ABCABC) so that a change in the machine's speed hits all; medians over rounds of the median of
``--repeats`` steps. Each optimizer is built as the trainer builds it (``make_optimizer``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ddpmkit.config import RunConfig, resolve_config
from ddpmkit.nn import UNet
from ddpmkit.train.setup import make_optimizer

OPTIMIZERS = {
    "loop": ["train.optimizer=adamw", "train.cpu_fused_adam=false"],
    "fused": ["train.optimizer=adamw", "train.cpu_fused_adam=true"],
    "muon": ["train.optimizer=muon"],
}


def step_times(config: RunConfig, batch: int, repeats: int) -> tuple[float, float]:
    """(ms per optimizer step, ms per training step) for ``config``'s network and optimizer."""
    torch.manual_seed(0)
    model = UNet(config.model).train()
    optimizer = make_optimizer(model, config.train, torch.device("cpu"))
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
    parser.add_argument("--config", default=None, help="a config file (default: the defaults)")
    args = parser.parse_args()
    configs = {name: resolve_config(args.config, extra) for name, extra in OPTIMIZERS.items()}
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in OPTIMIZERS}
    for _ in range(args.rounds):
        for name, config in configs.items():
            results[name].append(step_times(config, args.batch, args.repeats))
    n_tensors = len(list(UNet(configs["fused"].model).parameters()))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
        f"{n_tensors} parameter tensors, config {args.config or 'defaults'}"
    )
    print("| optimizer | optimizer ms/step | training ms/step | steps/s |")
    print("| --- | ---: | ---: | ---: |")
    for name, rows in results.items():
        opt = statistics.median(r[0] for r in rows)
        step = statistics.median(r[1] for r in rows)
        print(f"| {name} | {opt:.2f} | {step:.1f} | {1000 / step:.2f} |")


if __name__ == "__main__":
    main()
