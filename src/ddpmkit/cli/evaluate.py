"""``ddpm eval``, ``ddpm nll`` and ``ddpm fid``."""

from __future__ import annotations

import argparse
import sys


def evaluate(args: argparse.Namespace) -> int:
    from ddpmkit.evaluation.quality import run_eval

    done = run_eval(
        args.run_dir,
        n=args.n,
        preset=args.preset,
        samplers=[s.strip() for s in args.sampler.split(",") if s.strip()],
        steps=args.steps,
        guidance=args.guidance,
        features=args.features,
        feature_weights=args.feature_weights,
        samples=args.samples,
        data=args.data,
        batch_size=args.batch,
        seed=args.seed,
        amp=args.amp,
        classifier=args.classifier,
        out=args.out,
        cache_dir=args.cache_dir,
        weights=args.weights,
        device=args.device,
        step=args.step,
        progress=not args.no_progress,
        warn=lambda message: print(f"ddpm eval: warning: {message}", file=sys.stderr),
    )
    if done is None:  # a torchrun process other than 0
        return 0
    for note in done.notes:
        print(note, file=sys.stderr)
    print(done.header)
    print(done.table, end="")
    print("wrote " + ", ".join(str(p) for p in done.written))
    return 0


def nll(args: argparse.Namespace) -> int:
    from ddpmkit.evaluation.nll import run_nll

    report, path = run_nll(
        args.run_dir,
        data=args.data,
        n=args.n,
        batch_size=args.batch,
        seed=args.seed,
        out=args.out,
        weights=args.weights,
        device=args.device,
        step=args.step,
        progress=not args.no_progress,
    )
    if path is not None:  # process 0 of a torchrun job, or the only process
        print(report.summary())
        print(f"wrote {path}")
    return 0


def fid(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ddpmkit.evaluation.fid import FidRequest, compute_fid, save_statistics
    from ddpmkit.fileio import atomic_write_text

    request = FidRequest(
        features=args.features,
        feature_weights=args.feature_weights,
        batch_size=args.batch,
        image_size=args.size,
        channels=args.channels,
        cache_dir=Path(args.cache_dir) if args.cache_dir else None,
        device=args.device,
        preset=args.preset,
    )
    report = compute_fid(args.a, args.b, request, progress=not args.no_progress)
    for message in report.warnings:
        print(f"ddpm fid: warning: {message}", file=sys.stderr)
    print("\n".join(report.lines()))
    if args.save_stats:
        print(f"wrote {save_statistics(args.save_stats, report.stats[0])}")
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(report.to_dict(), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
