"""``ddpm forward``, ``ddpm plot`` and ``ddpm compare``: pictures and tables."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ddpmkit.errors import ConfigError


def _positive(value: int, name: str) -> None:
    if value < 1:
        raise ConfigError(f"{name} must be >= 1, got {value}")


def forward(args: argparse.Namespace) -> int:
    from ddpmkit.data import load_image
    from ddpmkit.viz import forward_process_rows, save_grid

    for value, name in ((args.num, "--num"), (args.size, "--size"), (args.steps, "--steps")):
        _positive(value, name)
    names = [n.strip() for n in args.schedule.split(",") if n.strip()]
    if not names:
        raise ConfigError("--schedule needs at least one schedule name, e.g. linear,cosine")
    x0 = load_image(args.image, size=args.size, channels=1 if args.gray else 3)
    rows, timesteps = forward_process_rows(x0, names, args.steps, args.num, args.seed)
    path = save_grid(rows, args.out, nrow=len(timesteps))
    print(f"t = {', '.join(str(t + 1) for t in timesteps)} (rows: {', '.join(names)})")
    print(f"wrote {path}")
    return 0


def plot(args: argparse.Namespace) -> int:
    from ddpmkit import plots
    from ddpmkit.rundir import QUALITY_PLOT, TRAINING_PLOT, RunDir

    if args.what == "schedules":
        path = plots.plot_alpha_bar(args.schedule.split(","), args.out, num_steps=args.num_steps)
    elif args.what == "forward":
        _positive(args.size, "--size")
        image = plots.forward_image(args.image, args.size, args.gray)
        path = plots.plot_forward_process(
            image, args.schedule.split(","), args.out, args.num, args.num_steps, args.seed
        )
    elif args.what == "embedding":
        path = plots.plot_time_embedding(args.dim, args.out, num_steps=args.num_steps)
    elif args.what == "training":
        out = args.out or RunDir(args.run_dir).report_path(TRAINING_PLOT)
        path = plots.plot_training_curves(plots.read_metrics(args.run_dir), out)
    else:
        out = args.out or RunDir(args.run_dir).report_path(QUALITY_PLOT)
        path = plots.plot_quality_vs_nfe(plots.read_eval_results(args.run_dir), out, args.metric)
    print(f"wrote {path}")
    return 0


def compare(args: argparse.Namespace) -> int:
    from ddpmkit.evaluation.compare import markdown_table, side_by_side, summarize_runs
    from ddpmkit.fileio import atomic_write_text

    summaries = summarize_runs(args.run_dirs)
    table = markdown_table(summaries, sampler=args.sampler, steps=args.steps)
    print(table, end="")
    if args.out:  # notes go to stderr so that stdout stays the table
        atomic_write_text(Path(args.out), table)
        print(f"wrote {args.out}", file=sys.stderr)
    if args.no_image:
        return 0
    if any(s.grid is not None for s in summaries):
        print(f"wrote {side_by_side(summaries, args.image)}", file=sys.stderr)
    else:
        print("no image: none of the runs has a sample grid yet", file=sys.stderr)
    return 0
