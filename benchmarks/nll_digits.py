"""NLL (bits/dim) on the built-in digits before and after a short training run, for a hybrid-loss
model with learned variances and an L_simple model with fixed variances of the same size.

    python benchmarks/nll_digits.py [--steps 400] [--n 256] [--out /tmp/nll_digits]
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

from ddpmkit.config import resolve_config
from ddpmkit.generate import LoadedRun
from ddpmkit.nll import evaluate_nll
from ddpmkit.train import Trainer

# the digits recipe this table was measured on (1.19M U-Net, linear schedule, ε, unweighted)
RECIPE = Path(__file__).resolve().parent.parent / "configs" / "luz" / "mse_noise_linear.toml"
VARIANTS = {
    "hybrid, learned_range": ["variance=learned_range", "loss=hybrid"],
    "L_simple, fixed_small": ["variance=fixed_small", "loss=l2"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--out", default="/tmp/nll_digits")
    args = parser.parse_args()
    print(
        "| model | steps | NLL untrained (bits/dim) | NLL trained | prior | decoder | KL terms "
        "| train s | NLL s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, overrides in VARIANTS.items():
        run_dir = Path(args.out) / name.split(",")[0].replace(" ", "_")
        config = resolve_config(
            RECIPE,
            [
                *overrides,
                f"train.steps={args.steps}",
                "train.sample_every=0",
                "train.checkpoint_every=0",
            ],
        )
        trainer = Trainer(config, run_dir, progress=False)
        untrained = LoadedRun(
            config, copy.deepcopy(trainer.model).eval(), trainer.diffusion, 0, trainer.device
        )
        before = evaluate_nll(untrained, n=args.n, batch_size=args.batch, progress=False)
        started = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - started
        trained = LoadedRun(config, trainer.ema, trainer.diffusion, args.steps, trainer.device)
        started = time.perf_counter()
        after = evaluate_nll(trained, n=args.n, batch_size=args.batch, progress=False)
        nll_s = time.perf_counter() - started
        print(
            f"| {name} | {args.steps} | {before.bits_per_dim:.3f} ± {before.ci95:.3f} | "
            f"{after.bits_per_dim:.3f} ± {after.ci95:.3f} | {after.prior:.4f} | "
            f"{after.decoder:.3f} | {after.kl_sum:.3f} | {train_s:.0f} | {nll_s:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
