"""``ddpm export`` and ``ddpm import`` (diffusers pipeline folders)."""

from __future__ import annotations

import argparse
import sys


def export(args: argparse.Namespace) -> int:
    from ddpmkit.interop import export_diffusers

    result = export_diffusers(
        args.run_dir, args.out, weights=args.weights, step=args.step, fmt=args.format
    )
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"exported step {result.step} ({result.weights} weights) to {result.path}")
    print(f"load it with: DDPMPipeline.from_pretrained('{result.path}')")
    return 0


def import_(args: argparse.Namespace) -> int:
    from ddpmkit.interop import import_diffusers

    result = import_diffusers(args.folder, args.out)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    model = result.config.model
    print(
        f"imported {args.folder} as {result.run_dir} at step {result.step} (config from "
        f"{result.source}): {model.num_levels} levels, channels "
        f"{'/'.join(map(str, model.level_channels))}, {result.config.diffusion.schedule} "
        f"schedule, T = {result.config.diffusion.num_steps}"
    )
    print(f"sample with: ddpm sample {result.run_dir}")
    return 0
