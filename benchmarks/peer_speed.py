"""ddpmkit against diffusers' UNet2DModel on the identical network, and both against the machine's
peak (a benchmark, not a test; needs ``pip install diffusers``).

For each config (digits, CIFAR-10) ddpmkit's U-Net gets random weights, which are copied into a
``UNet2DModel`` through the diffusers mapping (``ddpmkit.interop``; ``model.time_frequencies =
diffusers`` so that both compute the same function); the script first prints the largest output
difference. Then, alternating the two (ABAB, medians, so drift hits both alike), in float32 and
bfloat16 autocast:

* training images/s: one step = forward, MSE to ε, backward, AdamW, same batch for both;
* sampling images/s: one network call per image under ``torch.no_grad``;
* MFU: FLOPs of the step (``torch.utils.flop_counter``) per second over the peak of a square
  matmul of the same precision measured in the same run.

    python benchmarks/peer_speed.py [--device cpu|cuda] [--repeats 5]
                                    [--configs digits,cifar10_ddpm]

On a GPU it also reports peak memory and the largest batch that fits (doubling search).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from ddpmkit.config import resolve_config
from ddpmkit.interop.diffusers_config import unet_to_diffusers
from ddpmkit.interop.diffusers_weights import to_diffusers
from ddpmkit.nn import UNet

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
BATCH = {"digits": 64, "cifar10_ddpm": 8}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_matmul(device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 5):
    """FLOP/s of the best of ``repeats`` n×n matmuls."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def networks(name: str, device: torch.device):
    from diffusers import UNet2DModel

    config = resolve_config(CONFIGS / f"{name}.toml", ["model.time_frequencies=diffusers"])
    torch.manual_seed(0)
    ours = UNet(config.model)
    with torch.no_grad():  # random weights everywhere (a fresh U-Net has zero output convs)
        for p in ours.parameters():
            p.normal_(std=0.05) if p.ndim > 1 else p.uniform_(0.9, 1.1)
    theirs = UNet2DModel(**unet_to_diffusers(config.model, config.data.image_size))
    theirs.load_state_dict(to_diffusers(ours.state_dict(), config.model))
    return config, ours.to(device), theirs.to(device)


def step_function(model, call, shape, device, amp):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(shape, device=device, generator=generator)
    t = torch.randint(0, 1000, (shape[0],), device=device, generator=generator)
    eps = torch.randn(shape, device=device, generator=generator)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = call(model, x, t)
        F.mse_loss(out.float(), eps).backward()
        optimizer.step()

    @torch.no_grad()
    def sample_call() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            call(model, x, t)

    return train_step, sample_call


def timed(fn, device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def flops_of(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def largest_batch(make_step, device) -> int:
    batch = 1
    while batch <= 4096:
        try:
            make_step(batch)()
        except torch.OutOfMemoryError:
            return batch // 2
        batch *= 2
        torch.cuda.empty_cache()
    return batch // 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--configs", default="digits,cifar10_ddpm")
    args = parser.parse_args()
    device = torch.device(args.device)
    peaks = {amp: peak_matmul(device, torch.bfloat16 if amp else torch.float32) for amp in (0, 1)}
    print(
        f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; peak "
        f"matmul fp32 {peaks[0] / 1e9:.0f} GFLOP/s, bf16 {peaks[1] / 1e9:.0f} GFLOP/s\n"
    )
    rows = []
    for name in args.configs.split(","):
        config, ours, theirs = networks(name, device)
        size, ch = config.data.image_size, config.data.channels
        batch = BATCH.get(name, 16)
        shape = (batch, ch, size, size)
        calls = {
            "ddpmkit": (ours, lambda m, x, t: m(x, t)),
            "diffusers": (theirs, lambda m, x, t: m(x, t).sample),
        }
        with torch.no_grad():  # eval mode: no dropout (CIFAR's 0.1) in the comparison
            x = torch.randn(shape, device=device)
            t = torch.randint(0, 1000, (batch,), device=device)
            diff = float((ours.eval()(x, t) - theirs.eval()(x, t).sample).abs().max())
        ours.train(), theirs.train()
        print(
            f"{name}: {ours.num_parameters() / 1e6:.2f}M parameters, max |output difference| "
            f"{diff:.2e} (float32)",
            flush=True,
        )
        repeats = args.repeats if name == "digits" else max(2, args.repeats // 2)
        for amp in (False, True):
            fns = {k: step_function(m, c, shape, device, amp) for k, (m, c) in calls.items()}
            for kind, index in (("train", 0), ("sample", 1)):
                times = {k: [] for k in fns}
                for k in fns:  # warm-up
                    fns[k][index]()
                    fns[k][index]()
                for _ in range(repeats):
                    for k in fns:
                        times[k].append(timed(fns[k][index], device))
                flops = flops_of(fns["ddpmkit"][index])
                medians = {k: statistics.median(v) for k, v in times.items()}
                for k, seconds in medians.items():
                    rows.append(
                        (
                            name,
                            batch,
                            "bf16" if amp else "fp32",
                            kind,
                            k,
                            batch / seconds,
                            flops / seconds / peaks[amp],
                            medians["diffusers"] / seconds,
                        )
                    )
                print(
                    f"  {kind} {'bf16' if amp else 'fp32'}: "
                    + ", ".join(f"{k} {batch / s:.1f} img/s" for k, s in medians.items()),
                    flush=True,
                )
        if device.type == "cuda":
            for k, (model, call) in calls.items():
                torch.cuda.reset_peak_memory_stats(device)
                step_function(model, call, shape, device, True)[0]()
                peak = torch.cuda.max_memory_allocated(device) / 2**30
                shape_of = (ch, size, size)
                most = largest_batch(
                    lambda b, m=model, c=call, rest=shape_of: step_function(
                        m, c, (b, *rest), device, True
                    )[0],
                    device,
                )
                print(f"  {k}: peak memory {peak:.2f} GiB at batch {batch}; largest batch {most}")
    print("\n| config | batch | precision | work | library | images/s | MFU | vs diffusers |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, batch, precision, kind, lib, rate, mfu, ratio in rows:
        print(
            f"| {name} | {batch} | {precision} | {kind} | {lib} | {rate:.1f} | {mfu:.1%} | "
            f"{ratio:.2f}x |"
        )


if __name__ == "__main__":
    main()
