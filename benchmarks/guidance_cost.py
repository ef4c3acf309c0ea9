"""Cost of classifier-free guidance per sampling step: one network call on the doubled batch
[x, x] with labels [y, ∅] against two calls of the batch size (a benchmark, not a test).

    python benchmarks/guidance_cost.py [--config digits] [--batch 64,256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ddpmkit.config import resolve_config
from ddpmkit.diffusion import GaussianDiffusion
from ddpmkit.nn import UNet
from ddpmkit.sampling.denoiser import ModelDenoiser

ROOT = Path(__file__).resolve().parent.parent


def best_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="digits")
    parser.add_argument("--batch", default="64,256")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    config = resolve_config(str(ROOT / "configs" / f"{args.config}.toml"), ["model.num_classes=10"])
    model = UNet(config.model).eval()
    diffusion = GaussianDiffusion.from_config(config.diffusion)
    size, channels = config.data.image_size, config.data.channels
    print("| batch | unguided ms | guided, 2 calls ms | guided, 1 doubled call ms |")
    print("| --- | --- | --- | --- |")
    for batch in (int(b) for b in args.batch.split(",")):
        x = torch.randn(batch, channels, size, size)
        t = torch.full((batch,), 500)
        y = torch.randint(0, 10, (batch,))
        plain = ModelDenoiser(model, diffusion, y)
        two = ModelDenoiser(model, diffusion, y, 10, 2.0, max_batch=0)  # two calls per step
        one = ModelDenoiser(model, diffusion, y, 10, 2.0)  # one call on the doubled batch
        with torch.no_grad():
            times = [
                best_time(lambda d=d, x=x, t=t: d(x, t), args.repeats) for d in (plain, two, one)
            ]
        print(f"| {batch} | " + " | ".join(f"{1000 * s:.0f}" for s in times) + " |")


if __name__ == "__main__":
    main()
