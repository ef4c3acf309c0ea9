"""Sampler error per network call on Gaussian data, where the answer is known exactly.

Data N(0.1, 0.3²) per pixel, linear schedule, T = 1000, driven by the exact optimal denoiser
(tests/gaussian_oracle.py). Deterministic samplers map x_T to A·x_T + B, so running them on
x_T = 0 and 1 gives the output variance A² exactly; the ancestral sampler is measured on 200k
samples.
Prints the output variance divided by the data variance (1 = exact) per sampler and NFE.

    python benchmarks/gaussian_samplers.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from ddpmkit.diffusion import GaussianDiffusion
from ddpmkit.samplers import function_evaluations, sample
from ddpmkit.schedules import make_schedule

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from gaussian_oracle import GaussianOracle  # noqa: E402 (the tests' independent oracle)

MU, S, T = 0.1, 0.3, 1000
NFES = (10, 20, 50, 100, 1000)


def variance_ratio(sampler: str, steps: int) -> float:
    d = GaussianDiffusion(make_schedule("linear", T))
    model = GaussianOracle.for_schedule("linear", T, MU, S)
    kw = dict(sampler=sampler, steps=steps, clip_x0=False, dtype=torch.float64)
    if sampler == "ddpm":
        gen = torch.Generator().manual_seed(0)
        x = sample(model, d, (200_000, 1), generator=gen, **kw)
        return x.var().item() / S**2
    x_T = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    out = sample(model, d, (2, 1), x_T=x_T, **kw).squeeze(1)
    return (out[1] - out[0]).item() ** 2 / S**2


def main() -> None:
    print("| sampler | " + " | ".join(f"NFE {n}" for n in NFES) + " |")
    print("| --- |" + " ---: |" * len(NFES))
    for sampler in ("ddpm", "ddim", "dpm++", "heun"):
        cells = []
        for nfe in NFES:
            steps = (nfe + 1) // 2 if sampler == "heun" else nfe
            if sampler == "heun" and nfe == 1000:
                steps = 500
            got = function_evaluations(sampler, steps)
            cells.append(f"{variance_ratio(sampler, steps):.4f} ({got})")
        print(f"| {sampler} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
