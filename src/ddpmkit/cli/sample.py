"""``ddpm sample``."""

from __future__ import annotations

import argparse


def sample(args: argparse.Namespace) -> int:
    from ddpmkit.generate import sample_run

    done = sample_run(
        args.run_dir,
        n=args.n,
        classes=args.classes,
        guidance=args.guidance,
        sampler=args.sampler,
        steps=args.steps,
        eta=args.eta,
        churn=args.churn,
        clip_x0=not args.no_clip,
        seed=args.seed,
        batch_size=args.batch,
        amp=args.amp,
        grid=args.out,
        gif=args.gif,
        npz=args.npz,
        weights=args.weights,
        device=args.device,
        step=args.step,
        progress=not args.no_progress,
    )
    rate = done.n / done.seconds if done.seconds > 0 else float("inf")
    print(f"{done.n} images in {done.seconds:.1f} s ({rate:.1f} img/s) from step {done.step}")
    print(f"conditioning: {done.conditioning}")
    for path in done.written:
        print(f"wrote {path}")
    return 0
