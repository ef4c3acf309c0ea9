"""The CPU's per-cycle peak beside what matmuls, convolutions and a training step reach, in fp32
and bf16 (a benchmark, not a test; one job at a time on a quiet machine).

    python benchmarks/cpu_peak.py [--repeats 10]

Per-cycle peak = cores × clock × FLOP per cycle and core, from the instruction sets the CPU
reports (/proc/cpuinfo):

* fp32, AVX-512: two FMA ports × 16 lanes × 2 FLOP = 64;
* bf16, AVX512_BF16 (vdpbf16ps: 16 lanes × 2 products, each multiply and add): 2 × 64 = 128;
* bf16, AMX (tdpbf16ps: a 16×32 by 32×16 tile product, 8,192 multiply-adds, one per 16 cycles):
  1,024.

The clock is the base clock the kernel reports (a virtual machine shows no turbo), so the
peaks are those at base clock; turbo can only raise them. Measured: a square matmul (best of
sizes), one 3×3 convolution of the digits U-Net's size (forward + backward, NCHW and
channels-last), and oneDNN's record of which kernels a bf16 convolution runs in each layout
(``ONEDNN_VERBOSE``), which shows where channels-last loses time.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

import torch
import torch.nn.functional as F
from guidance_cost import best_time  # benchmarks/ is on sys.path when run

FLOP_PER_CYCLE = {"fp32 AVX-512": 64, "bf16 AVX512_BF16": 128, "bf16 AMX": 1024}


def machine() -> tuple[int, float, set[str]]:
    """(cores, base clock in GHz, CPU flags)."""
    text = open("/proc/cpuinfo", encoding="utf-8").read()
    flags = set(re.search(r"^flags\s*:\s*(.*)$", text, re.M).group(1).split())
    mhz = [float(m) for m in re.findall(r"^cpu MHz\s*:\s*([\d.]+)$", text, re.M)]
    cores = len(os.sched_getaffinity(0))
    return cores, max(mhz) / 1000, flags


def matmul_flops(dtype: torch.dtype, repeats: int) -> float:
    best = 0.0
    for n in (1024, 2048, 3072):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        best = max(best, 2 * n**3 / best_time(lambda a=a, b=b: a @ b, repeats))
    return best


def conv_flops(dtype: torch.dtype, channels_last: bool, repeats: int) -> float:
    """Forward + backward of a 3×3 convolution, 64 → 64 channels, 16×16, batch 64 (a level of
    the digits U-Net)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(64, 64, 16, 16, dtype=dtype).to(memory_format=fmt).requires_grad_()
    w = torch.randn(64, 64, 3, 3, dtype=dtype).to(memory_format=fmt).requires_grad_()

    def step():
        F.conv2d(x, w, padding=1).sum().backward()

    flop = 3 * 2 * 64 * 64 * 64 * 9 * 16 * 16  # forward, grad input, grad weight
    return flop / best_time(step, repeats)


KERNELS = """
import torch, torch.nn.functional as F
fmt = torch.channels_last if {last} else torch.contiguous_format
x = torch.randn(64, 64, 16, 16, dtype=torch.bfloat16).to(memory_format=fmt).requires_grad_()
w = torch.randn(64, 64, 3, 3, dtype=torch.bfloat16).to(memory_format=fmt).requires_grad_()
for i in range(3):
    print(f"pass {{i}}", flush=True)
    F.conv2d(x, w, padding=1).sum().backward()
"""


def onednn_kernels(channels_last: bool) -> dict[str, tuple[int, float]]:
    """{primitive kind: implementation → (calls, milliseconds)} over the last of three bf16
    forward+backward passes, from ONEDNN_VERBOSE. Its lines read ``onednn_verbose[,v1],
    primitive,exec,cpu,KIND,IMPLEMENTATION,...,TIME_MS`` (the version field came with oneDNN
    3.x), so the fields are found after ``exec`` rather than at fixed places."""
    env = {**os.environ, "ONEDNN_VERBOSE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", KERNELS.format(last=channels_last)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    passes: list[list[tuple[str, float]]] = []
    for line in out.splitlines():
        if line.startswith("pass "):
            passes.append([])
            continue
        fields = line.split(",")
        if not passes or not line.startswith("onednn_verbose") or "exec" not in fields:
            continue
        at = fields.index("exec")
        if len(fields) > at + 3 and fields[at + 1] == "cpu":
            passes[-1].append((f"{fields[at + 2]}: {fields[at + 3]}", float(fields[-1])))
    kernels: dict[str, tuple[int, float]] = {}
    for name, ms in passes[-1] if passes else []:
        calls, total = kernels.get(name, (0, 0.0))
        kernels[name] = (calls + 1, total + ms)
    return kernels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    cores, ghz, flags = machine()
    has = {
        "fp32 AVX-512": "avx512f" in flags,
        "bf16 AVX512_BF16": "avx512_bf16" in flags,
        "bf16 AMX": "amx_bf16" in flags,
    }
    print(f"{cores} cores at {ghz:.2f} GHz (base), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    print("\n| unit | FLOP/cycle/core | peak GFLOP/s |")
    print("| --- | ---: | ---: |")
    peaks = {}
    for unit, per_cycle in FLOP_PER_CYCLE.items():
        if has[unit]:
            peaks[unit] = cores * ghz * 1e9 * per_cycle
            print(f"| {unit} | {per_cycle} | {peaks[unit] / 1e9:,.0f} |")
    fp32_peak, bf16_peak = (
        peaks.get("fp32 AVX-512"),
        max((v for k, v in peaks.items() if k.startswith("bf16")), default=None),
    )
    print("\n| measured | GFLOP/s | % of its per-cycle peak |")
    print("| --- | ---: | ---: |")
    rows = [
        ("matmul fp32", matmul_flops(torch.float32, args.repeats), fp32_peak),
        ("matmul bf16", matmul_flops(torch.bfloat16, args.repeats), bf16_peak),
    ]
    for dtype, name, peak in (
        (torch.float32, "fp32", fp32_peak),
        (torch.bfloat16, "bf16", bf16_peak),
    ):
        for last in (False, True):
            layout = "channels-last" if last else "NCHW"
            rows.append(
                (f"conv 3×3 fwd+bwd {name} {layout}", conv_flops(dtype, last, args.repeats), peak)
            )
    for name, flops, peak in rows:
        share = f"{100 * flops / peak:.1f} %" if peak else "–"
        print(f"| {name} | {flops / 1e9:,.0f} | {share} |")
    for last in (False, True):
        kernels = onednn_kernels(last)
        layout = "channels-last" if last else "NCHW"
        print(f"\nbf16 conv fwd+bwd, {layout}: oneDNN ran (third pass)")
        for kernel, (calls, ms) in kernels.items():
            print(f"  {calls} × {kernel}: {ms:.3f} ms")
        if not kernels:
            print("  no oneDNN primitive (PyTorch's own kernel ran)")


if __name__ == "__main__":
    main()
