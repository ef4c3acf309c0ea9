"""The ``ddpm`` command: a thin layer that parses arguments and calls the library.

User mistakes end with one line on stderr and exit code 2; Ctrl-C (SIGINT) and SIGTERM end
training with exit code 130 and 143 after the state of the last completed step is saved.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from ddpmkit import __version__
from ddpmkit.errors import ConfigError, DdpmkitError

EXAMPLES = """examples:
  ddpm train                                   # digits, about 10 minutes on a laptop CPU
  ddpm train --data ./my_images --out runs/faces data.image_size=32 data.channels=3 \\
             model.in_channels=3 train.steps=20000
  ddpm train --config configs/cifar10_ddpm.toml --data ./cifar10/train
  ddpm train --resume runs/digits train.steps=8000   # continue, with more steps
  ddpm sample runs/digits --n 64 --sampler ddim --steps 50 --gif denoise.gif
  ddpm forward photo.jpg --schedule linear,cosine --out forward.png
  ddpm plot training runs/digits                 # loss curves (needs ddpmkit[plot])
  ddpm compare runs/luz/* --out compare.md          # table of the runs + grids side by side
"""


def _add_run_loading_options(parser: argparse.ArgumentParser) -> None:
    """--weights, --device and --no-progress of the commands that load a trained run."""
    parser.add_argument(
        "--weights",
        default="ema",
        choices=["ema", "model"],
        help="which weights to use (default ema)",
    )
    parser.add_argument(
        "--step",
        type=int,
        default=None,
        help="use the checkpoint of this training step (default: the latest good one)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddpm",
        description="Denoising diffusion probabilistic models: train, sample, look.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ddpmkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = sub.add_parser(
        "train",
        help="train a model (default: the built-in digits, ~10 min on a CPU)",
        description=(
            "Train a DDPM. The run directory receives config.json, model/ema/optimizer "
            "safetensors, metrics.jsonl and samples/; it is all that `ddpm sample` and "
            "`ddpm train --resume` need. Settings come from the defaults (the digits recipe), "
            "then --config, then KEY=VALUE overrides such as train.steps=2000, "
            "model.channel_mults=1,2,2 or diffusion.schedule=cosine (a bare key works where "
            "it is unique: steps=2000 is ambiguous, lr=1e-3 is not)."
        ),
    )
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    train.add_argument("--config", metavar="FILE.toml", help="a config file (see configs/)")
    train.add_argument(
        "--data",
        metavar="digits|PATH|hf:NAME",
        help="data source: 'digits' (built in), an image folder, a .npz of uint8 NHWC images, a "
        "CIFAR-10/100 folder (PATH[:test]) or a Hugging Face data set hf:NAME[:SPLIT]",
    )
    train.add_argument(
        "--out",
        metavar="RUN_DIR",
        help="run directory to create (default: runs/<data>-<date>-<time>)",
    )
    train.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its last checkpoint, with its saved config "
        "(overrides still apply, e.g. train.steps=8000 to train longer)",
    )
    train.add_argument("--no-progress", action="store_true", help="hide progress bars")

    samp = sub.add_parser(
        "sample",
        help="draw images from a trained run",
        description="Sample from the EMA weights of a run directory and write a grid PNG, "
        "optionally a denoising GIF and an .npz of uint8 NHWC images (key arr_0).",
    )
    samp.add_argument("run_dir", metavar="RUN_DIR")
    samp.add_argument(
        "--n", type=int, default=None, help="number of images, per class with --class (default 64)"
    )
    samp.add_argument(
        "--sampler",
        default="ddpm",
        help="ddpm (ancestral), ddim, dpm++ (DPM-Solver++ 2M) or heun (default ddpm)",
    )
    samp.add_argument(
        "--steps",
        type=int,
        default=None,
        help="sampling steps (default: all T for ddpm, 50 for ddim, 20 for dpm++, 18 for heun, "
        "which costs 2·steps − 1 network calls); ddpm with fewer steps uses the respaced process",
    )
    samp.add_argument(
        "--eta", type=float, default=0.0, help="DDIM noise: 0 deterministic, 1 ~ DDPM"
    )
    samp.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    samp.add_argument("--batch", type=int, default=256, help="images per batch (default 256)")
    samp.add_argument("--out", metavar="GRID.png", help="grid path (default RUN_DIR/samples/...)")
    samp.add_argument("--gif", metavar="FILE.gif", help="also write a GIF of the denoising")
    samp.add_argument("--npz", metavar="FILE.npz", help="also write the images as uint8 NHWC")
    samp.add_argument(
        "--amp",
        action="store_true",
        help="run the network under bfloat16 autocast (the sampler's arithmetic stays float32; "
        "fast where the device has native bf16: GPUs of compute capability >= 8, CPUs with "
        "AVX-512 BF16 or AMX)",
    )
    samp.add_argument("--no-clip", action="store_true", help="do not clip predicted x0 to [-1, 1]")
    samp.add_argument(
        "--class",
        dest="classes",
        metavar="K[,K...]|all",
        help="class-conditional runs: the class(es) to draw, by index or name, or all; with "
        "several classes --n is per class (default 8) and the grid has one row per class",
    )
    samp.add_argument(
        "--guidance",
        type=float,
        default=0.0,
        help="classifier-free guidance weight w (default 0): eps = (1 + w) eps(x, class) - "
        "w eps(x, null), i.e. diffusers' guidance_scale = 1 + w",
    )
    _add_run_loading_options(samp)

    nll = sub.add_parser(
        "nll",
        help="negative log-likelihood (variational bound) in bits/dim",
        description="Evaluate the full variational bound L_T + sum of KL terms + decoder term "
        "on images of the run's data (or --data), in bits/dim, with a 95%% interval; T network "
        "calls per batch. Writes the result as JSON.",
    )
    nll.add_argument("run_dir", metavar="RUN_DIR")
    nll.add_argument(
        "--data", metavar="digits|PATH|hf:NAME", help="data source (default: the run's)"
    )
    nll.add_argument(
        "--n",
        "--num-samples",
        type=int,
        default=1000,
        help="number of images (default 1000); under torchrun write --num-samples",
    )
    nll.add_argument("--batch", type=int, default=64, help="images per batch (default 64)")
    nll.add_argument("--seed", type=int, default=0, help="seed for the subset and noise")
    nll.add_argument("--out", metavar="FILE.json", help="JSON path (default RUN_DIR/nll.json)")
    _add_run_loading_options(nll)

    ev = sub.add_parser(
        "eval",
        help="sample quality: FID, KID, precision/recall per sampler and step count",
        description="Draw --n samples per sampler and step count with the run's EMA weights (or "
        "read --samples), embed them with a feature extractor (digits: the shipped CNN, the "
        "default for the built-in digits; inception: the FID Inception-v3, weights read from "
        "--feature-weights) and compare them with the run's data. Results are merged into "
        "RUN_DIR/eval.json; with several samplers or step counts a quality-vs-NFE table "
        "(eval.md) and plot (quality_vs_nfe.png, needs matplotlib) are written too.",
    )
    ev.add_argument("run_dir", metavar="RUN_DIR")
    ev.add_argument(
        "--n",
        "--num-samples",
        type=int,
        default=None,
        help="samples per setting (default 10000; 50000 with --preset paper); under torchrun "
        "write --num-samples, as torchrun reads --n as one of its own options",
    )
    ev.add_argument(
        "--preset",
        choices=["paper"],
        help="paper: Inception features, 50000 samples, the full reference set; warns when "
        "fewer samples or reference images are used",
    )
    ev.add_argument(
        "--sampler",
        default="dpm++",
        help="comma-separated samplers: ddpm, ddim, dpm++, heun (default dpm++)",
    )
    ev.add_argument(
        "--steps",
        help="comma-separated step counts, e.g. 10,20,50,100,1000 (default: each sampler's "
        "default: ddpm T, ddim 50, dpm++ 20, heun 18)",
    )
    ev.add_argument(
        "--features",
        choices=["digits", "inception"],
        help="feature extractor (default digits for the built-in digits, else inception)",
    )
    ev.add_argument(
        "--feature-weights",
        metavar="PATH",
        help="extractor weights file (inception: pt_inception-2015-12-05-6726825d.pth; "
        "default: pytorch-fid's or torch-fidelity's cache file)",
    )
    ev.add_argument(
        "--samples", metavar="NPZ", help="score these uint8 NHWC images (arr_0) instead of sampling"
    )
    ev.add_argument("--data", metavar="digits|PATH", help="reference data (default: the run's)")
    ev.add_argument("--batch", type=int, default=500, help="images per batch (default 500)")
    ev.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    ev.add_argument(
        "--guidance",
        default="0",
        metavar="W[,W...]",
        help="class-conditional runs: guidance weights to evaluate (default 0), each with the "
        "samples' class accuracy",
    )
    ev.add_argument(
        "--amp",
        action="store_true",
        help="run the network under bfloat16 autocast (the sampler's arithmetic stays float32; "
        "fast where the device has native bf16: GPUs of compute capability >= 8, CPUs with "
        "AVX-512 BF16 or AMX)",
    )
    ev.add_argument(
        "--classifier",
        metavar="digits|FILE.pt2",
        help="judge the class of conditional samples: digits (default for digits runs) or a "
        "torch.export program mapping [-1, 1] images to logits",
    )
    ev.add_argument("--out", metavar="FILE.json", help="JSON path (default RUN_DIR/eval.json)")
    ev.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="reference feature cache (default $DDPMKIT_CACHE or ~/.cache/ddpmkit)",
    )
    _add_run_loading_options(ev)

    fwd = sub.add_parser(
        "forward",
        help="picture of the forward (noising) process on one image",
        description="Noise one image at evenly spaced t with q(x_t|x_0) and write one row per "
        "schedule.",
    )
    fwd.add_argument("image", metavar="IMAGE")
    fwd.add_argument(
        "--schedule",
        default="linear",
        help="schedule name or comma-separated names (default linear)",
    )
    fwd.add_argument("--steps", type=int, default=1000, help="T (default 1000)")
    fwd.add_argument("--num", type=int, default=8, help="columns: noise levels shown (default 8)")
    fwd.add_argument("--size", type=int, default=128, help="image size in pixels (default 128)")
    fwd.add_argument("--gray", action="store_true", help="convert the image to grayscale")
    fwd.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    fwd.add_argument(
        "--out", default="forward.png", metavar="FILE.png", help="output path (default forward.png)"
    )

    plot = sub.add_parser(
        "plot",
        help="matplotlib figures: schedules, forward process, embedding, training, quality",
        description="Draw one figure to a PNG with matplotlib (pip install 'ddpmkit[plot]').",
    )
    what = plot.add_subparsers(dest="what", metavar="WHAT", required=True)
    all_schedules = "linear,cosine,quadratic,sigmoid"
    p_sched = what.add_parser("schedules", help="ᾱ_t and log SNR of the noise schedules")
    p_sched.add_argument("--schedule", default=all_schedules, help="names (default all four)")
    p_sched.add_argument("--num-steps", type=int, default=1000, help="T (default 1000)")
    p_sched.add_argument(
        "--out", default="schedules.png", metavar="FILE.png", help="default schedules.png"
    )
    p_fwd = what.add_parser(
        "forward", help="q(x_t|x_0) of one image, a row per schedule, the same noise in each"
    )
    p_fwd.add_argument(
        "image", metavar="IMAGE|digits", help="an image file, or 'digits' (the first built-in one)"
    )
    p_fwd.add_argument("--schedule", default=all_schedules, help="names (default all four)")
    p_fwd.add_argument("--num", type=int, default=8, help="columns: noise levels (default 8)")
    p_fwd.add_argument("--num-steps", type=int, default=1000, help="T (default 1000)")
    p_fwd.add_argument("--size", type=int, default=64, help="image size in pixels (default 64)")
    p_fwd.add_argument("--gray", action="store_true", help="convert the image to grayscale")
    p_fwd.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p_fwd.add_argument(
        "--out",
        default="forward_process.png",
        metavar="FILE.png",
        help="default forward_process.png",
    )
    p_emb = what.add_parser("embedding", help="heat map of the sinusoidal time embedding")
    p_emb.add_argument("--dim", type=int, default=128, help="embedding size (default 128)")
    p_emb.add_argument("--num-steps", type=int, default=1000, help="T (default 1000)")
    p_emb.add_argument(
        "--out", default="time_embedding.png", metavar="FILE.png", help="default time_embedding.png"
    )
    p_train = what.add_parser("training", help="loss curves of a run from its metrics.jsonl")
    p_train.add_argument("run_dir", metavar="RUN_DIR")
    p_train.add_argument("--out", metavar="FILE.png", help="default RUN_DIR/training.png")
    p_quality = what.add_parser(
        "quality", help="FID or KID against network calls, from RUN_DIR/eval.json (ddpm eval)"
    )
    p_quality.add_argument("run_dir", metavar="RUN_DIR")
    p_quality.add_argument(
        "--metric", default="fid", choices=["fid", "kid"], help="what to plot (default fid)"
    )
    p_quality.add_argument("--out", metavar="FILE.png", help="default RUN_DIR/quality_vs_nfe.png")

    comp = sub.add_parser(
        "compare",
        help="compare several runs: a markdown table and their sample grids side by side",
        description="Summarize run directories (meant for several, e.g. runs/luz/*) in one "
        "markdown table: the config keys that differ between them, step, training time, final "
        "loss, and FID/KID/precision/recall from eval.json and bits/dim from nll.json where "
        "present. The table goes to stdout; the latest sample grids, side by side, to an image.",
    )
    comp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories")
    comp.add_argument("--out", metavar="FILE.md", help="also write the table to this file")
    pictures = comp.add_mutually_exclusive_group()
    pictures.add_argument(
        "--image",
        default="compare.png",
        metavar="FILE.png",
        help="the grids side by side (default compare.png in the current folder)",
    )
    pictures.add_argument("--no-image", action="store_true", help="write no image")
    comp.add_argument(
        "--sampler",
        help="show the eval.json results of this sampler (default: the sampler and steps that "
        "all runs were evaluated with, the most NFE; else each run's best FID)",
    )
    comp.add_argument(
        "--steps", type=int, metavar="N", help="show the eval.json results with N sampling steps"
    )
    _add_editing_parsers(sub)
    _add_interop_parsers(sub)
    _add_fid_parser(sub)
    _add_cache_parser(sub)
    return parser


def _positive(value: int, name: str) -> None:
    if value < 1:
        raise DdpmkitError(f"{name} must be >= 1, got {value}")


def _cmd_train(args: argparse.Namespace) -> int:
    from ddpmkit.config import resolve_config
    from ddpmkit.rundir import RunDir
    from ddpmkit.training import Trainer

    overrides = list(args.overrides)
    if args.data is not None:
        overrides.append(f"data.source={args.data}")
    if args.resume:
        if args.out and Path(args.out) != Path(args.resume):
            raise DdpmkitError("--resume continues RUN_DIR in place: drop --out")
        run_dir = Path(args.resume)
        config = resolve_config(args.config, overrides, base=RunDir(run_dir).read_config_dict())
    else:
        config = resolve_config(args.config, overrides)
        if args.out:
            run_dir = Path(args.out)
        else:
            stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(config.data.source).stem).strip("_")
            name = stem or "run"
            run_dir = Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    trainer = Trainer(config, run_dir, resume=bool(args.resume), progress=not args.no_progress)
    if trainer.is_main:
        print(f"data:  {trainer.dataset_description}")
        print(f"model: {trainer.model.describe()}")
        limit = config.train.time_limit_min
        budget = f"{config.train.steps} steps" + (f" or {limit:g} min" if limit else "")
        print(f"run:   {run_dir} (device {trainer.device}, {budget})")
    result = trainer.train()
    if trainer.is_main:
        if result.step == trainer.start_step:
            print(f"done: the run was already at step {result.step}; nothing to train")
        else:
            print(
                f"done: step {result.step}, loss {result.final_loss:.4f}, "
                f"{result.elapsed_s / 60:.1f} min of training"
            )
        if result.grid_path is not None:
            print(f"samples: {result.grid_path}")
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from ddpmkit.generate import SampleRequest, generate, load_run, write_outputs

    _positive(args.batch, "--batch")
    run = load_run(args.run_dir, weights=args.weights, device=args.device, step=args.step)
    classes = _classes(args.classes, args.run_dir, run.config.model.num_classes)
    per_class = args.n if args.n is not None else (8 if classes and len(classes) > 1 else 64)
    _positive(per_class, "--n")
    labels = [k for k in classes for _ in range(per_class)] if classes else None
    request = SampleRequest(
        n=len(labels) if labels else per_class,
        labels=labels,
        guidance=args.guidance,
        null_label=run.config.model.num_classes if classes else None,
        sampler=args.sampler,
        steps=args.steps,
        eta=args.eta,
        clip_x0=not args.no_clip,
        seed=args.seed,
        batch_size=args.batch,
        gif_frames=50 if args.gif else 0,
        amp=args.amp,
    )
    data = run.config.data
    grid = args.out
    if grid is None:
        steps = args.steps if args.steps is not None else "all"
        grid = Path(args.run_dir) / "samples" / f"sample-{args.sampler}{steps}-seed{args.seed}.png"
    for output in (grid, args.gif, args.npz):  # fail before sampling, not after
        if output is not None:
            if Path(output).is_dir():
                raise DdpmkitError(f"'{output}' is a folder: give a file name")
            Path(output).parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = generate(
        run.model,
        run.diffusion,
        (data.channels, data.image_size, data.image_size),
        request,
        run.device,
        progress=not args.no_progress,
    )
    seconds = time.perf_counter() - started
    written = write_outputs(
        result,
        grid=Path(grid),
        gif=Path(args.gif) if args.gif else None,
        npz=Path(args.npz) if args.npz else None,
        nrow=per_class if classes and len(classes) > 1 else None,
    )
    n = request.n
    print(f"{n} images in {seconds:.1f} s ({n / seconds:.1f} img/s) from step {run.step}")
    for path in written:
        print(f"wrote {path}")
    return 0


def _classes(spec: str | None, run_dir: str, num_classes: int) -> list[int] | None:
    """``--class`` as class indices: numbers, names from classes.json, or ``all``."""
    if spec is None:
        return None
    if not num_classes:
        raise DdpmkitError(
            f"'{run_dir}' is not class-conditional (train it with train.conditional=true): "
            "drop --class"
        )
    from ddpmkit.rundir import CLASSES_FILE, RunDir

    names = RunDir(run_dir).read_json(CLASSES_FILE) or []
    if spec.strip() == "all":
        return list(range(num_classes))
    classes = []
    for item in (part.strip() for part in spec.split(",") if part.strip()):
        if item in names:
            classes.append(names.index(item))
        elif item.isdigit() and int(item) < num_classes:
            classes.append(int(item))
        else:
            raise DdpmkitError(
                f"unknown class '{item}': give 0..{num_classes - 1}, a class name or all"
            )
    if not classes:
        raise DdpmkitError("--class is empty")
    return classes


def _cmd_nll(args: argparse.Namespace) -> int:
    import dataclasses

    from ddpmkit.generate import load_run
    from ddpmkit.nll import evaluate_nll, write_report
    from ddpmkit.rundir import NLL_FILE

    _positive(args.n, "--n")
    _positive(args.batch, "--batch")
    distributed, rank, device = _eval_processes(args.device)
    run = load_run(args.run_dir, weights=args.weights, device=device, step=args.step)
    data = run.config.data
    if args.data is not None:
        data = dataclasses.replace(data, source=args.data, random_flip=False)
    progress = not args.no_progress and rank == 0
    report = evaluate_nll(
        run, data, args.n, args.batch, args.seed, progress=progress, distributed=distributed
    )
    if rank != 0:  # under torchrun: each process bounds its share; process 0 reports
        return 0
    path = write_report(report, args.out or Path(args.run_dir) / NLL_FILE)
    print(report.summary())
    print(f"wrote {path}")
    return 0


def _int_list(text: str | None, name: str) -> list[int | None]:
    if text is None:
        return [None]
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{name} must be comma-separated integers, got '{text}'") from None
    if not values:
        raise ConfigError(f"{name} is empty")
    return values


def _eval_processes(device: str) -> tuple[bool, int, str]:
    """(distributed, rank, device) of ``ddpm eval`` and ``ddpm nll``: under ``torchrun`` the
    processes split the work between them (one GPU each), process 0 reports and writes."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return False, 0, device
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if device == "auto" and torch.cuda.is_available():
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
        torch.cuda.set_device(torch.device(device))
    return True, dist.get_rank(), device


def _float_list(text: str, name: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{name} must be comma-separated numbers, got '{text}'") from None
    if not values or any(not v >= 0 for v in values):
        raise ConfigError(f"{name} must list weights >= 0, got '{text}'")
    return values


def _cmd_eval(args: argparse.Namespace) -> int:
    import dataclasses

    from ddpmkit.evaluate import (
        EvalRequest,
        check_features,
        default_features,
        evaluate,
        markdown_table,
        plan,
        reference_for,
        write_eval_json,
    )
    from ddpmkit.fileio import atomic_write_text
    from ddpmkit.generate import load_run
    from ddpmkit.metrics.extractors import load_extractor
    from ddpmkit.metrics.presets import PAPER_SAMPLES, paper_warning, preset_features
    from ddpmkit.rundir import EVAL_FILE

    chosen = preset_features(args.preset, args.features)
    n = args.n if args.n is not None else PAPER_SAMPLES if args.preset == "paper" else 10_000
    request = EvalRequest(
        n=n,
        samplers=[s.strip() for s in args.sampler.split(",") if s.strip()],
        steps=_int_list(args.steps, "--steps"),
        seed=args.seed,
        batch_size=args.batch,
        samples=Path(args.samples) if args.samples else None,
        guidance=_float_list(args.guidance, "--guidance"),
        amp=args.amp,
    )
    distributed, rank, device = _eval_processes(args.device)
    run = load_run(args.run_dir, weights=args.weights, device=device, step=args.step)
    digits_run = run.config.data.source == "digits"
    request.classifier = args.classifier or ("digits" if digits_run else None)
    if request.samples is None:
        plan(request, run.diffusion.num_steps)  # a bad sampler or step count fails before work
    data = run.config.data
    if args.data is not None:
        data = dataclasses.replace(data, source=args.data, random_flip=False)
    features = chosen or default_features(data)
    check_features(features)
    extractor = load_extractor(features, weights=args.feature_weights, device=run.device)
    progress = not args.no_progress and rank == 0
    cache = Path(args.cache_dir) if args.cache_dir else None
    reference = reference_for(data, extractor, cache, progress, distributed)
    if rank != 0:  # under torchrun: this process's share of samples and features; 0 scores
        evaluate(run, request, extractor, None, args.weights, False, distributed)
        return 0
    counts = [("the reference set", len(reference.features))]
    if request.samples is None:
        counts.append(("--n", request.n))
    for what, count in counts if args.preset == "paper" else []:
        if message := paper_warning(what, count):
            print(f"ddpm eval: warning: {message}", file=sys.stderr)
    report = evaluate(run, request, extractor, reference, args.weights, progress, distributed)
    if args.preset == "paper" and request.samples is not None:
        if message := paper_warning(str(request.samples), report.results[0].n):
            print(f"ddpm eval: warning: {message}", file=sys.stderr)
    path = Path(args.out) if args.out else Path(args.run_dir) / EVAL_FILE
    merged = write_eval_json(path, report)
    table = markdown_table(merged["results"])
    print(
        f"{features} features, reference {reference.source} (n={len(reference.features)}; two "
        f"random halves of it score FID {merged['reference_halves_fid']:.3f})"
    )
    print(table, end="")
    written = [path]
    atomic_write_text(path.with_suffix(".md"), table)
    written.append(path.with_suffix(".md"))
    unguided = [r for r in merged["results"] if not r.get("guidance")]
    weights = {r.get("guidance", 0.0) for r in merged["results"] if r.get("accuracy") is not None}
    try:
        if len(unguided) > 1:
            from ddpmkit.plots import plot_quality_vs_nfe

            written.append(plot_quality_vs_nfe(unguided, path.parent / "quality_vs_nfe.png"))
        if len(weights) > 1:
            from ddpmkit.plots import plot_guidance_tradeoff

            written.append(
                plot_guidance_tradeoff(merged["results"], path.parent / "guidance_tradeoff.png")
            )
    except ConfigError as err:  # matplotlib is an optional extra
        print(f"no plot: {err}", file=sys.stderr)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _cmd_forward(args: argparse.Namespace) -> int:
    import torch

    from ddpmkit.data import load_image
    from ddpmkit.diffusion import GaussianDiffusion, spaced_timesteps
    from ddpmkit.schedules import make_schedule
    from ddpmkit.viz import save_grid

    _positive(args.num, "--num")
    _positive(args.size, "--size")
    _positive(args.steps, "--steps")
    names = [n.strip() for n in args.schedule.split(",") if n.strip()]
    if not names:
        raise DdpmkitError("--schedule needs at least one schedule name, e.g. linear,cosine")
    x0 = load_image(args.image, size=args.size, channels=1 if args.gray else 3).unsqueeze(0)
    timesteps = spaced_timesteps(args.steps, min(args.num, args.steps))
    rows = []
    for name in names:
        diffusion = GaussianDiffusion(make_schedule(name, args.steps))
        gen = torch.Generator().manual_seed(args.seed)
        noise = torch.randn(x0.shape, generator=gen).expand(len(timesteps), *x0.shape[1:])
        t = torch.tensor(timesteps)
        rows.append(diffusion.q_sample(x0.expand_as(noise), t, noise))
    path = save_grid(torch.cat(rows), args.out, nrow=len(timesteps))
    print(f"t = {', '.join(str(t + 1) for t in timesteps)} (rows: {', '.join(names)})")
    print(f"wrote {path}")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from ddpmkit import plots

    if args.what == "schedules":
        path = plots.plot_alpha_bar(args.schedule.split(","), args.out, num_steps=args.num_steps)
    elif args.what == "forward":
        _positive(args.size, "--size")
        if args.image == "digits":  # a file named digits: ./digits
            image = plots.digits_image(0, size=args.size)
        else:
            from ddpmkit.data import load_image

            image = load_image(args.image, size=args.size, channels=1 if args.gray else 3)
        path = plots.plot_forward_process(
            image, args.schedule.split(","), args.out, args.num, args.num_steps, args.seed
        )
    elif args.what == "embedding":
        path = plots.plot_time_embedding(args.dim, args.out, num_steps=args.num_steps)
    elif args.what == "training":
        metrics = plots.read_metrics(args.run_dir)
        path = plots.plot_training_curves(metrics, args.out or Path(args.run_dir) / "training.png")
    else:
        rows = plots.read_eval_results(args.run_dir)
        out = args.out or Path(args.run_dir) / "quality_vs_nfe.png"
        path = plots.plot_quality_vs_nfe(rows, out, metric=args.metric)
    print(f"wrote {path}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from ddpmkit.compare import markdown_table, side_by_side, summarize_runs
    from ddpmkit.fileio import atomic_write_text

    summaries = summarize_runs(args.run_dirs)
    table = markdown_table(summaries, sampler=args.sampler, steps=args.steps)
    print(table, end="")
    if args.out:  # notes go to stderr so that stdout stays the table
        atomic_write_text(Path(args.out), table)
        print(f"wrote {args.out}", file=sys.stderr)
    if not args.no_image:
        if any(s.grid is not None for s in summaries):
            print(f"wrote {side_by_side(summaries, args.image)}", file=sys.stderr)
        else:
            print("no image: none of the runs has a sample grid yet", file=sys.stderr)
    return 0


def _add_editing_parsers(sub: argparse._SubParsersAction) -> None:
    """``ddpm inpaint`` and ``ddpm edit`` (SDEdit)."""
    inp = sub.add_parser(
        "inpaint",
        help="fill a masked region of images with a trained run (RePaint or replacement)",
        description="Fill the masked pixels of an image (or every image of a folder) with any "
        "trained run; the known pixels are kept exactly. Writes a grid of input/result pairs "
        "and an .npz of the results (uint8 NHWC, arr_0).",
    )
    inp.add_argument("run_dir", metavar="RUN_DIR")
    inp.add_argument("--image", required=True, help="an image file or a folder of images")
    inp.add_argument(
        "--mask",
        default="lower",
        help="a mask PNG (white = fill, black = keep) or lower, upper, left, right, center "
        "(default lower)",
    )
    inp.add_argument(
        "--method",
        default="repaint",
        choices=["repaint", "replace"],
        help="repaint: RePaint's resampling (ancestral sampler); replace: replace the known "
        "pixels of the predicted x0 at every step (any sampler) (default repaint)",
    )
    inp.add_argument("--jump", type=int, default=10, help="RePaint jump length (default 10)")
    inp.add_argument("--resample", type=int, default=10, help="RePaint resamplings (default 10)")
    _add_editing_options(inp)

    edit = sub.add_parser(
        "edit",
        help="image-to-image with SDEdit: noise the input to strength·T, then denoise",
        description="SDEdit (Meng et al. 2022): noise each input image to the level strength·T "
        "with q(x_t|x_0) and denoise it with any sampler. Small strengths keep the input, 1 "
        "ignores it. Writes a grid of input/result pairs and an .npz of the results.",
    )
    edit.add_argument("run_dir", metavar="RUN_DIR")
    edit.add_argument("--image", required=True, help="an image file or a folder of images")
    edit.add_argument(
        "--strength", type=float, default=0.5, help="noise level as a share of T (default 0.5)"
    )
    edit.add_argument("--eta", type=float, default=0.0, help="DDIM noise (default 0)")
    _add_editing_options(edit)


def _add_editing_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sampler", default="ddpm", help="ddpm, ddim, dpm++ or heun (default ddpm)"
    )
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--batch", type=int, default=64, help="images per batch (default 64)")
    parser.add_argument("--out", metavar="GRID.png", help="grid path (default RUN_DIR/samples/)")
    parser.add_argument("--npz", metavar="FILE.npz", help="npz path (default: the grid's, .npz)")
    parser.add_argument("--no-clip", action="store_true", help="do not clip predicted x0")
    parser.add_argument(
        "--class",
        dest="classes",
        metavar="K",
        help="class-conditional runs: the class to steer towards (index or name)",
    )
    parser.add_argument(
        "--guidance", type=float, default=0.0, help="guidance weight w with --class (default 0)"
    )
    _add_run_loading_options(parser)


def _cmd_edit_images(args: argparse.Namespace) -> int:
    """``ddpm inpaint`` and ``ddpm edit``: read the inputs, edit them in batches, write."""
    import torch

    from ddpmkit import edit
    from ddpmkit.generate import SampleResult, load_run, write_outputs
    from ddpmkit.sampling import get_sampler

    _positive(args.batch, "--batch")
    get_sampler(args.sampler).check(eta=getattr(args, "eta", 0.0))
    run = load_run(args.run_dir, weights=args.weights, device=args.device, step=args.step)
    data = run.config.data
    images = edit.read_images(args.image, data.image_size, data.channels)
    clip = not args.no_clip
    classes = _classes(args.classes, args.run_dir, run.config.model.num_classes)
    if classes is not None and len(classes) != 1:
        raise DdpmkitError("--class takes one class for inpaint and edit")
    if args.guidance and classes is None:
        raise DdpmkitError("--guidance needs --class (and a class-conditional run)")

    def network(batch):
        """The run's network, or its guided class-conditional denoiser for this batch."""
        if classes is None:
            return run.model
        from ddpmkit.sampling.denoiser import ModelDenoiser

        labels = torch.full((len(batch),), classes[0], dtype=torch.long)
        null = run.config.model.num_classes
        return ModelDenoiser(run.model, run.diffusion, labels, null, args.guidance)

    if args.command == "inpaint":
        mask = edit.read_mask(args.mask, data.image_size)
        shown = mask * images + (1 - mask) * 0.0  # the region to fill shown in mid gray

        def one_batch(batch, generator):
            return edit.inpaint(
                network(batch),
                run.diffusion,
                batch,
                mask.to(batch.device),
                args.method,
                args.sampler,
                args.steps,
                args.jump,
                args.resample,
                clip,
                generator,
            )

        name = f"inpaint-{args.method}-{args.sampler}-seed{args.seed}"
    else:
        shown = images

        def one_batch(batch, generator):
            return edit.sdedit(
                network(batch),
                run.diffusion,
                batch,
                args.strength,
                args.sampler,
                args.steps,
                args.eta,
                clip,
                generator,
            )

        name = f"edit-s{args.strength:g}-{args.sampler}-seed{args.seed}"
    grid = Path(args.out) if args.out else Path(args.run_dir) / "samples" / f"{name}.png"
    npz = Path(args.npz) if args.npz else grid.with_suffix(".npz")
    for output in (grid, npz):
        if output.is_dir():
            raise DdpmkitError(f"'{output}' is a folder: give a file name")
    started = time.perf_counter()
    results = edit.in_batches(
        one_batch, images, args.seed, args.batch, run.device, progress=not args.no_progress
    )
    seconds = time.perf_counter() - started
    pairs = _pairs(shown, results)
    written = write_outputs(SampleResult(pairs, []), grid=grid, nrow=min(8, 2 * len(images)))
    written += write_outputs(SampleResult(results, []), npz=npz)
    print(f"{len(images)} images in {seconds:.1f} s from step {run.step}")
    for path in written:
        print(f"wrote {path}")
    return 0


def _pairs(inputs, outputs):
    """input_0, result_0, input_1, result_1, ... for a grid of pairs."""
    import torch

    return torch.stack([inputs, outputs], dim=1).flatten(0, 1)


def _add_interop_parsers(sub: argparse._SubParsersAction) -> None:
    """``ddpm export`` and ``ddpm import`` (diffusers pipeline folders)."""
    exp = sub.add_parser(
        "export",
        help="write a run as a diffusers DDPMPipeline folder (UNet2DModel + DDPMScheduler)",
        description="Write the EMA (or model) weights of a run as a folder that diffusers' "
        "DDPMPipeline.from_pretrained loads and the Hugging Face Hub shows: model_index.json, "
        "unet/ (config.json, diffusion_pytorch_model.safetensors), scheduler/, a README.md "
        "model card with the metrics of eval.json and nll.json, and ddpmkit.json (the run's "
        "config, for `ddpm import`). Models diffusers cannot express exactly are refused.",
    )
    exp.add_argument("run_dir", metavar="RUN_DIR")
    exp.add_argument(
        "--format", default="diffusers", choices=["diffusers"], help="output format: diffusers"
    )
    exp.add_argument("--out", required=True, metavar="DIR", help="folder to write")
    exp.add_argument(
        "--weights", default="ema", choices=["ema", "model"], help="which weights (default ema)"
    )
    exp.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")

    imp = sub.add_parser(
        "import",
        help="make a run directory of a diffusers UNet2DModel + DDPMScheduler folder",
        description="Read a diffusers pipeline folder as downloaded from the Hub (model_index."
        "json, unet/ with diffusion_pytorch_model.safetensors, scheduler/) into a new run "
        "directory: config.json and a checkpoint whose model and EMA weights are the imported "
        "ones, with a fresh optimizer. `ddpm sample|eval|nll RUN` then work, and `ddpm train "
        "--resume RUN --data PATH` fine-tunes it. Pickled .bin weights are refused.",
    )
    imp.add_argument("folder", metavar="DIR", help="the diffusers pipeline folder")
    imp.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory to create")


def _cmd_export(args: argparse.Namespace) -> int:
    from ddpmkit.interop import export_diffusers

    result = export_diffusers(
        args.run_dir, args.out, weights=args.weights, step=args.step, fmt=args.format
    )
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"exported step {result.step} ({result.weights} weights) to {result.path}")
    print(f"load it with: DDPMPipeline.from_pretrained('{result.path}')")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
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


def _add_fid_parser(sub: argparse._SubParsersAction) -> None:
    """``ddpm fid A B``."""
    fid = sub.add_parser(
        "fid",
        help="FID (and KID, precision, recall) between two image sets or statistics files",
        description="Compare A (e.g. generated samples) with B (the reference). Each is an .npz "
        "of uint8 NHWC images (arr_0), an image folder, any data source of --data (digits, "
        "hf:NAME, a CIFAR folder), or a statistics .npz with mu and sigma (pytorch-fid's, the "
        "OpenAI suite's reference batches). FID always; KID, precision and recall where both "
        "sides hold images. B's features are cached like ddpm eval's reference.",
    )
    fid.add_argument("a", metavar="A", help="generated images or statistics")
    fid.add_argument("b", metavar="B", help="reference images or statistics")
    fid.add_argument(
        "--features",
        choices=["inception", "digits"],
        help="feature extractor (default inception)",
    )
    fid.add_argument(
        "--feature-weights",
        metavar="PATH",
        help="extractor weights (inception: pt_inception-2015-12-05-6726825d.pth; default: "
        "pytorch-fid's or torch-fidelity's cache file)",
    )
    fid.add_argument(
        "--preset", choices=["paper"], help="paper: Inception features; warns below 50000 images"
    )
    fid.add_argument(
        "--size",
        type=int,
        help="image size both sides are loaded at (default: the native size of an images .npz, "
        "else the extractor's input: 299 inception, 16 digits)",
    )
    fid.add_argument("--channels", type=int, choices=[1, 3], help="default 3 (digits: 1)")
    fid.add_argument("--batch", type=int, default=500, help="images per batch (default 500)")
    fid.add_argument("--json", metavar="OUT.json", help="also write the results as JSON")
    fid.add_argument(
        "--save-stats", metavar="OUT.npz", help="write A's mu and sigma (pytorch-fid's layout)"
    )
    fid.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="reference feature cache (default $DDPMKIT_CACHE or ~/.cache/ddpmkit)",
    )
    fid.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    fid.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _cmd_fid(args: argparse.Namespace) -> int:
    import json

    from ddpmkit.fid import FidRequest, compute_fid, save_statistics
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
    for name, side in (("A", report.a), ("B", report.b)):
        held = f"{side.n_images} images" if side.n_images is not None else "no images used"
        print(f"{name}: {side.source} ({side.kind}; {held}; {side.dims}-d features)")
    if report.features is not None:
        print(
            f"features: {report.features} ({report.extractor_fingerprint}), images at "
            f"{report.image_size}x{report.image_size}, {report.channels} channel(s)"
        )
    print(f"FID        {report.fid:.4f}")
    if report.kid_mean is not None:
        print(
            f"KID        {report.kid_mean:.6f} ± {report.kid_std:.6f} "
            f"({report.kid_subsets} subsets of {report.kid_subset_size})"
        )
    if report.precision is not None:
        print(f"precision  {report.precision:.4f}\nrecall     {report.recall:.4f}")
    if args.save_stats:
        print(f"wrote {save_statistics(args.save_stats, report.stats[0])}")
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(report.to_dict(), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _add_cache_parser(sub: argparse._SubParsersAction) -> None:
    """``ddpm cache build|list|clear``: the disk cache of decoded data sets."""
    cache = sub.add_parser(
        "cache",
        help="the disk cache of decoded data sets: build, list, clear",
        description="Data sets are decoded once into $DDPMKIT_CACHE/data (default "
        "~/.cache/ddpmkit/data) and memory-mapped afterwards; see data.cache in the README.",
    )
    what = cache.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    build = what.add_parser(
        "build", help="decode a source into the cache now (e.g. before a torchrun job)"
    )
    build.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="data.* overrides")
    build.add_argument("--config", metavar="FILE.toml", help="a config file (its data section)")
    build.add_argument("--data", metavar="digits|PATH|hf:NAME", help="the data source")
    build.add_argument("--no-progress", action="store_true", help="hide progress bars")
    what.add_parser("list", help="the entries: source, settings, images, size")
    clear = what.add_parser("clear", help="remove the entries of some sources (default: all)")
    clear.add_argument("sources", nargs="*", metavar="SOURCE", help="as given to --data")


def _cmd_cache(args: argparse.Namespace) -> int:
    from ddpmkit.config import apply_overrides, load_config_file
    from ddpmkit.data import DataConfig, load_dataset
    from ddpmkit.data.cache import DataCache

    cache = DataCache()
    if args.cache_command == "build":
        overrides = [*args.overrides, "data.cache=on"]
        if args.data is not None:
            overrides.append(f"data.source={args.data}")
        settings = apply_overrides(load_config_file(args.config) if args.config else {}, overrides)
        data = DataConfig.from_dict(settings.get("data", {}))
        dataset = load_dataset(data, progress=not args.no_progress)
        size = dataset.images_uint8.numel() / 2**20
        print(f"{dataset.describe()}: {size:.1f} MiB in {dataset.cache_file.parent}")
        return 0
    entries = cache.entries()
    if args.cache_command == "list":
        if not entries:
            print(f"the cache {cache.root} is empty")
        for entry in entries:
            c, h, w = entry.meta["shape"]
            print(
                f"{entry.nbytes / 2**20:10.1f} MiB  {entry.count:>9} x {c}x{h}x{w}  "
                f"{entry.meta['source']}  ({entry.path.name})"
            )
        return 0
    chosen = [e for e in entries if not args.sources or cache.matches(e, args.sources)]
    for entry in chosen:
        cache.remove(entry)
        print(f"removed {entry.meta['source']} ({entry.nbytes / 2**20:.1f} MiB, {entry.path})")
    if args.sources and not chosen:
        print(f"no cache entry of {', '.join(args.sources)} in {cache.root}")
    return 0


COMMANDS = {
    "cache": _cmd_cache,
    "train": _cmd_train,
    "sample": _cmd_sample,
    "nll": _cmd_nll,
    "eval": _cmd_eval,
    "forward": _cmd_forward,
    "plot": _cmd_plot,
    "compare": _cmd_compare,
    "inpaint": _cmd_edit_images,
    "edit": _cmd_edit_images,
    "export": _cmd_export,
    "import": _cmd_import,
    "fid": _cmd_fid,
}


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command](args)
    except (DdpmkitError, OSError) as err:  # OSError: a path that cannot be read or written
        message = " ".join(str(err).split())  # always one line
        print(f"ddpm {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ddpm {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # training interruption carries its own message
        from ddpmkit.training import TrainingInterrupted

        if isinstance(err, TrainingInterrupted):
            print(
                f"ddpm train: {err}; continue with `ddpm train --resume {err.run_dir}`",
                file=sys.stderr,
            )
            return err.exit_code
        raise


if __name__ == "__main__":
    sys.exit(main())
