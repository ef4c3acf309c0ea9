"""Training and sampling throughput of the shipped configs (a benchmark, not a test).

For each config: images/s of one full training step (forward, loss, backward, AdamW step) at a
few batch sizes, achieved GFLOP/s (FLOPs counted by torch.utils.flop_counter on one step), and
sampling images/s (one network call per image and step). Prints a markdown table.

    python benchmarks/train_throughput.py [--device cpu] [--configs digits,cifar10_ddpm]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from ddpmkit.config import resolve_config
from ddpmkit.diffusion import GaussianDiffusion
from ddpmkit.nn import UNet

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step_rate(model, diffusion, shape, device, warmup: int, repeats: int, amp: bool):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x0 = torch.rand(shape, device=device) * 2 - 1

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = diffusion.training_loss(model, x0).loss
        loss.backward()
        optimizer.step()

    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    _sync(device)
    seconds = (time.perf_counter() - start) / repeats
    return shape[0] / seconds, flops / seconds / 1e9, seconds


@torch.no_grad()
def sample_call_rate(model, shape, device, repeats: int, amp: bool) -> float:
    """Images/s of a single denoising call; a T-step sampler is T times slower per image."""
    x = torch.randn(shape, device=device)
    t = torch.full((shape[0],), 500, device=device, dtype=torch.long)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        model(x, t)
        _sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            model(x, t)
        _sync(device)
    return shape[0] * repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--configs", default="digits,cifar10_ddpm")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    cpu_batches = {"digits": [32, 128, 256], "cifar10_ddpm": [8, 32]}
    gpu_batches = {"digits": [128, 512], "cifar10_ddpm": [128]}
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"device {device}, threads {torch.get_num_threads()}, amp {args.amp}"
    )
    print("| config | params | batch | train img/s | GFLOP/s | s/step | sample calls img/s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in args.configs.split(","):
        config = resolve_config(CONFIG_DIR / f"{name}.toml", ["data.source=digits"])
        model = UNet(config.model).to(device)
        diffusion = GaussianDiffusion.from_config(config.diffusion)
        size, channels = config.data.image_size, config.data.channels
        batches = (gpu_batches if device.type == "cuda" else cpu_batches).get(name, [32])
        for batch in batches:
            shape = (batch, channels, size, size)
            rate, gflops, seconds = train_step_rate(
                model.train(),
                diffusion,
                shape,
                device,
                warmup=2,
                repeats=args.repeats,
                amp=args.amp,
            )
            sample_rate = sample_call_rate(model.eval(), shape, device, args.repeats, args.amp)
            print(
                f"| {name} | {model.num_parameters() / 1e6:.2f}M | {batch} | {rate:.1f} | "
                f"{gflops:.1f} | {seconds:.3f} | {sample_rate:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
