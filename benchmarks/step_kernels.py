"""A bf16 training step of a shipped config four ways: NCHW, channels-last with the attention
kernel PyTorch picks, channels-last with the math attention kernel, and ``torch.compile``
(inductor) in NCHW (a benchmark, not a test; a quiet machine).

    python benchmarks/step_kernels.py [--config fashion_mnist_cpu] [--batch 64] [--repeats 20]

Each variant is :func:`speed_options.training_step` (forward, loss, backward, AdamW) under
bf16 autocast; the seconds of its first two steps (compilation, for the compiled one: a warm
inductor cache on disk makes them short) and the median of ``--repeats`` steps after them, the
variants interleaved step by step so that the machine's drift falls on all of them.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from speed_options import CONFIG_DIR, training_step  # benchmarks/ is on sys.path when run
from torch.nn.attention import SDPBackend, sdpa_kernel

from ddpmkit.config import resolve_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="fashion_mnist_cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    variants = {  # name: (channels_last, math attention, compiled)
        "NCHW": (False, False, False),
        "channels-last": (True, False, False),
        "channels-last, math attention": (True, True, False),
        "NCHW, torch.compile": (False, False, True),
    }
    steps, first, times = {}, {}, {}
    for name, (last, math, compiled) in variants.items():
        config = resolve_config(CONFIG_DIR / f"{args.config}.toml")
        model, x0, step = training_step(config, args.batch, channels_last=last, amp=True)
        if compiled:  # the step calls the module the closure holds: compile it in place
            model.compile()
        context = (lambda: sdpa_kernel(SDPBackend.MATH)) if math else contextlib.nullcontext
        started = time.perf_counter()
        for _ in range(2):
            with context():
                step()
        first[name] = time.perf_counter() - started
        steps[name], times[name] = (step, context), []
    for _ in range(args.repeats):
        for name, (step, context) in steps.items():
            with context():
                started = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - started)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.config}, "
          f"batch {args.batch}, bf16 autocast, median of {args.repeats} steps\n")  # fmt: skip
    print("| variant | first two steps s | ms/step | img/s |")
    print("| --- | ---: | ---: | ---: |")
    for name, values in times.items():
        ms = statistics.median(values) * 1e3
        print(f"| {name} | {first[name]:.1f} | {ms:.1f} | {args.batch / ms * 1e3:.0f} |")


if __name__ == "__main__":
    main()
