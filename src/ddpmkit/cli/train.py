"""``ddpm train``."""

from __future__ import annotations

import argparse


def train(args: argparse.Namespace) -> int:
    from ddpmkit.sharding import leave_process_group
    from ddpmkit.train import Trainer, prepare_run

    config, run_dir = prepare_run(args.config, args.overrides, args.data, args.out, args.resume)
    trainer = Trainer(config, run_dir, resume=bool(args.resume), progress=not args.no_progress)
    if trainer.is_main:
        print(f"data:  {trainer.dataset_description}")
        print(f"model: {trainer.model.describe()}")
        limit = config.train.time_limit_min
        budget = f"{config.train.steps} steps" + (f" or {limit:g} min" if limit else "")
        print(f"run:   {run_dir} (device {trainer.device}, {budget})")
    result = trainer.train()
    leave_process_group()
    if not trainer.is_main:
        return 0
    if result.step == trainer.start_step:
        print(f"done: the run was already at step {result.step}; nothing to train")
    else:
        minutes = result.elapsed_s / 60
        print(
            f"done: step {result.step}, loss {result.final_loss:.4f}, {minutes:.1f} min of training"
        )
    if result.grid_path is not None:
        print(f"samples: {result.grid_path}")
    return 0
