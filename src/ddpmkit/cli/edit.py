"""``ddpm inpaint`` and ``ddpm edit``."""

from __future__ import annotations

import argparse


def edit(args: argparse.Namespace) -> int:
    from ddpmkit.edit import edit_run

    inpainting = args.command == "inpaint"
    done = edit_run(
        args.run_dir,
        args.image,
        method=args.method if inpainting else "sdedit",
        mask=args.mask if inpainting else "lower",
        invert_mask=inpainting and args.invert_mask,
        strength=0.5 if inpainting else args.strength,
        jump=args.jump if inpainting else 10,
        resample=args.resample if inpainting else 10,
        eta=0.0 if inpainting else args.eta,
        sampler=args.sampler,
        steps=args.steps,
        classes=args.classes,
        guidance=args.guidance,
        clip_x0=not args.no_clip,
        seed=args.seed,
        batch_size=args.batch,
        grid=args.out,
        npz=args.npz,
        weights=args.weights,
        device=args.device,
        step=args.step,
        progress=not args.no_progress,
    )
    print(f"{done.n} images in {done.seconds:.1f} s from step {done.step}")
    print(f"conditioning: {done.conditioning}")
    for path in done.written:
        print(f"wrote {path}")
    return 0
