"""Quality per training minute: train variants of a recipe for a fixed time, score each, report
medians over seeds (a benchmark, not a test; one job at a time on a quiet machine).

    python benchmarks/recipe_screen.py --minutes 1 --seeds 0,1,2 \
        --variant baseline= --variant min_snr=diffusion.loss_weight=min_snr \
        --variant power_ema=train.ema=power [--base data.source=fashion-mnist ...] \
        [--config configs/fashion_mnist_cpu.toml] [--n 500] [--out results.json]

Each variant is ``NAME=OVERRIDE[,OVERRIDE...]`` on top of ``--config`` and ``--base``; each run
trains with ``train.time_limit_min=MINUTES`` (the cosine learning rate decays with the time
used) and a step budget it cannot reach (or, with ``--steps N``, for N steps with no time
limit, so that variants of equal cost per step are compared free of the machine's drift in
speed), then ``ddpm eval`` draws ``--n`` DDIM-50 samples from
the EMA weights and scores them with the data set's features (digits CNN for digits, the
Fashion-MNIST CNN against the test set for fashion-mnist). Printed: a markdown table of the
Fréchet distance per seed with the median, the steps and images/s reached, the seconds of
training. Results are appended to ``--out`` as JSON lines as they come, so a long screen can be
read while it runs and resumed (finished runs are skipped).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from pathlib import Path

import torch

from ddpmkit.config import RunConfig
from ddpmkit.evaluation.quality import run_eval
from ddpmkit.train import Trainer, prepare_run


def variant(text: str) -> tuple[str, list[str]]:
    """``NAME=A,B,...`` → (NAME, [A, B, ...]); a comma inside brackets belongs to its list value
    (``model.channel_mults=[1,2]``)."""
    name, _, overrides = text.partition("=")
    parts, depth, current = [], 0, ""
    for char in overrides:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth < 0:
            raise SystemExit(f"--variant {text}: a ']' without its '['")
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return name, [o for o in parts if o]


def train_and_score(config: RunConfig, run: Path, n: int, seed: int) -> dict:
    trainer = Trainer(config, run, progress=False)
    started = time.perf_counter()
    result = trainer.train()
    wall = time.perf_counter() - started
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rates = [m["images_per_s"] for m in metrics if "images_per_s" in m]
    run_eval(
        run,
        n=n,
        samplers=["ddim"],
        steps=[50],
        seed=seed,
        progress=False,
        out=run / "eval.json",
        warn=lambda message: None,
    )
    row = json.loads((run / "eval.json").read_text())["results"][0]
    return {
        "steps": result.step,
        "train_s": round(result.elapsed_s, 1),
        "wall_s": round(wall, 1),
        "images_per_s": round(statistics.median(rates), 1) if rates else None,
        "fd": row["fid"],
        "kid": row["kid_mean"],
        "precision": row["precision"],
        "recall": row["recall"],
        **({"accuracy": row["accuracy"]} if "accuracy" in row else {}),
        **({"class_shares": row["class_shares"]} if row.get("class_shares") else {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--minutes", type=float, help="train each run for this many minutes")
    budget.add_argument(
        "--steps",
        type=int,
        help="train each run for this many steps instead (no time limit): variants that do not "
        "change a step's cost are then compared free of the machine's drift in speed",
    )
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--variant", action="append", type=variant, required=True)
    parser.add_argument("--base", action="append", default=[], help="overrides for every run")
    parser.add_argument("--config", default=None)
    parser.add_argument("--n", type=int, default=500, help="samples scored per run")
    parser.add_argument("--runs", default="runs/screen", help="folder of the run directories")
    parser.add_argument("--out", default="runs/screen/results.jsonl")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {}
    if out.is_file():
        for line in out.read_text().splitlines():
            record = json.loads(line)
            key = (record["variant"], record["seed"], record["minutes"], record.get("budget_steps"))
            done[key] = record
    if args.steps is not None:
        budget_text = f"{args.steps} steps"
        limit = ["train.time_limit_min=0", f"train.steps={args.steps}"]
    else:
        budget_text = f"{args.minutes:g} min"
        limit = [f"train.time_limit_min={args.minutes}", "train.steps=1000000"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {budget_text}/run")
    for name, overrides in args.variant:
        for seed in seeds:
            key = (name, seed, args.minutes, args.steps)
            run = Path(args.runs) / f"{name}-{budget_text.replace(' ', '')}-seed{seed}"
            every = [
                *args.base,
                *overrides,
                f"train.seed={seed}",
                *limit,
                "train.sample_every=0",
                "train.checkpoint_every=0",
            ]
            config, _ = prepare_run(args.config, every, out=run)
            # a results line is reused only for the same resolved config, not for a variant
            # name whose defaults have moved since it was measured
            digest = hashlib.sha256(config.to_json().encode()).hexdigest()
            if key in done:
                recorded = done[key].get("config_sha256")
                if recorded is None:
                    print(f"{name} seed {seed}: reusing a line without a config digest (older)")
                elif recorded != digest:
                    raise SystemExit(
                        f"{out} holds {name} seed {seed} at {budget_text} with another "
                        "config (the defaults or the file moved): use another --out or name"
                    )
                continue
            record = {
                "variant": name,
                "seed": seed,
                "minutes": args.minutes,
                **({"budget_steps": args.steps} if args.steps is not None else {}),
                "overrides": every,
                "config_sha256": digest,
            }
            record.update(train_and_score(config, run, args.n, seed))
            done[key] = record
            with out.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            print(f"{name} seed {seed}: FD {record['fd']:.3f}, {record['steps']} steps", flush=True)
    print("\n| variant | FD per seed | median FD | steps (median) | img/s | budget |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for name, _ in args.variant:
        keys = [(name, s, args.minutes, args.steps) for s in seeds]
        rows = [done[k] for k in keys if k in done]
        fds = [r["fd"] for r in rows]
        print(
            f"| {name} | {', '.join(f'{v:.3f}' for v in fds)} | {statistics.median(fds):.3f} | "
            f"{statistics.median(r['steps'] for r in rows):.0f} | "
            f"{statistics.median(r['images_per_s'] or 0 for r in rows):.0f} | {budget_text} |"
        )


if __name__ == "__main__":
    main()
