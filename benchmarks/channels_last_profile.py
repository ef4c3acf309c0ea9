"""Where a bf16 training step loses time in channels-last: the digits U-Net's step profiled in
both layouts, operators compared by self time (a benchmark, not a test; a quiet machine).

    python benchmarks/channels_last_profile.py [--config digits] [--batch 64] [--steps 10] \
        [--rows 15] [--fp32]

The steps run interleaved (NCHW, channels-last, NCHW, ...) after warm-up steps in each
layout, so a drift of the machine's speed falls on both; ``torch.profiler`` records each
layout's steps and the table lists, per operator, the milliseconds of self CPU time per step
in each layout and the difference: the largest losses, then the largest gains, then the step
totals.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch
from speed_options import CONFIG_DIR, training_step  # benchmarks/ is on sys.path when run
from torch.profiler import ProfilerActivity, profile

from ddpmkit.config import resolve_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="digits")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rows", type=int, default=15)
    parser.add_argument("--fp32", action="store_true", help="float32 instead of bf16 autocast")
    args = parser.parse_args()
    path = CONFIG_DIR / f"{args.config}.toml"
    layouts = {}
    for last in (False, True):
        config = resolve_config(path if path.exists() else None)
        layouts[last] = training_step(config, args.batch, channels_last=last, amp=not args.fp32)
        for _ in range(3):
            layouts[last][2]()
    per_step = {last: defaultdict(float) for last in layouts}  # operator -> self CPU ms per step
    for _ in range(args.steps):
        for last, (_, _, step) in layouts.items():
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                step()
            for event in prof.key_averages():
                per_step[last][event.key] += event.self_cpu_time_total / 1e3 / args.steps
    nchw, cl = per_step[False], per_step[True]
    names = sorted(set(nchw) | set(cl), key=lambda n: cl.get(n, 0) - nchw.get(n, 0), reverse=True)
    precision = "fp32" if args.fp32 else "bf16"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.config} "
          f"batch {args.batch}, {precision}, {args.steps} steps per layout\n")  # fmt: skip
    print("| operator | NCHW ms/step | channels-last ms/step | difference |")
    print("| --- | ---: | ---: | ---: |")
    gains = [n for n in reversed(names[args.rows :]) if cl.get(n, 0) < nchw.get(n, 0)]
    for name in names[: args.rows] + ["…"] + gains[: max(3, args.rows // 3)]:
        if name == "…":
            print("| … (largest gains:) | | | |")
            continue
        a, b = nchw.get(name, 0.0), cl.get(name, 0.0)
        print(f"| {name} | {a:.2f} | {b:.2f} | {b - a:+.2f} |")
    a, b = sum(nchw.values()), sum(cl.values())
    print(f"| **all operators** | {a:.1f} | {b:.1f} | {b - a:+.1f} |")


if __name__ == "__main__":
    main()
