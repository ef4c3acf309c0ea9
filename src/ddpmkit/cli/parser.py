"""The ``ddpm`` command line's parser: every command, option and help text, and the argument
types they share (a float must be finite, a count positive), so that a bad value is one line
and exit 2 before any work. No command logic lives here."""

from __future__ import annotations

import argparse
import math

from ddpmkit import __version__


def finite_float(text: str) -> float:
    """A float option's type: nan and ±inf are refused (they would sample black images)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: '{text}'") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got '{text}'")
    return value


def nonnegative_float(text: str) -> float:
    """A finite float >= 0 (guidance weights, DDIM's eta)."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got '{text}'")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (counts, batch sizes, step counts)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got '{text}'")
    return value


def int_list(text: str) -> list[int]:
    """Comma-separated integers (``ddpm eval --steps 10,20,50``)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated integers, got '{text}'"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("is empty")
    return values


def weight_list(text: str) -> list[float]:
    """Comma-separated finite weights >= 0 (``ddpm eval --guidance 0,1,2``)."""
    values = [nonnegative_float(v.strip()) for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"needs at least one weight, got '{text}'")
    return values


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors as one line and exit 2 (argparse prints the usage too)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


EXAMPLES = """examples:
  ddpm train                                   # digits, about 5 minutes on a 2-core CPU
  ddpm train --data ./my_images --out runs/faces data.image_size=32 data.channels=3 \\
             train.steps=20000
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


def build_parser() -> argparse.ArgumentParser:
    """The parser of every ``ddpm`` command."""
    parser = _Parser(
        prog="ddpm",
        description="Denoising diffusion probabilistic models: train, sample, look.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ddpmkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = sub.add_parser(
        "train",
        help="train a model (default: the built-in digits, ~5 min on a 2-core CPU)",
        description=(
            "Train a DDPM. The run directory receives config.json, model/ema/optimizer "
            "safetensors, metrics.jsonl and samples/; it is all that `ddpm sample` and "
            "`ddpm train --resume` need. Settings come from the defaults (the digits recipe), "
            "then --config, then KEY=VALUE overrides such as train.steps=2000, "
            "model.channel_mults=1,2,2 or diffusion.schedule=linear (a bare key works where "
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
        "--eta", type=nonnegative_float, default=0.0, help="DDIM noise: 0 deterministic, 1 ~ DDPM"
    )
    samp.add_argument(
        "--churn",
        type=nonnegative_float,
        default=0.0,
        help="heun: S_churn of Karras et al. (2022), noise added back at each step (default 0)",
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
        type=nonnegative_float,
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
        "--data",
        metavar="digits|PATH|hf:NAME[:SPLIT]",
        help="data source, read as written (its :SPLIT, else the source's default split) at the "
        "run's size (default: the run's data)",
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
        "default for the built-in digits; fashion-mnist: the shipped CNN for Fashion-MNIST "
        "runs, judged against its test split; inception: the FID Inception-v3, weights read "
        "from --feature-weights) and compare them with the run's data. Results are merged into "
        "RUN_DIR/eval.json and its table (eval.md); with several samplers or step counts a "
        "quality-vs-NFE plot (quality_vs_nfe.png, needs matplotlib) is written too.",
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
        type=int_list,
        default=[None],
        help="comma-separated step counts, e.g. 10,20,50,100,1000 (default: each sampler's "
        "default: ddpm T, ddim 50, dpm++ 20, heun 18)",
    )
    ev.add_argument(
        "--features",
        choices=["digits", "fashion-mnist", "inception"],
        help="feature extractor (default digits for the built-in digits, fashion-mnist for "
        "fashion-mnist runs, which are judged against its 10,000 test images, else inception)",
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
    ev.add_argument(
        "--data",
        metavar="digits|PATH[:SPLIT]",
        help="reference data, read as written (its :SPLIT, else the source's default split) "
        "at the run's size (default: the run's data; Fashion-MNIST runs: its test split)",
    )
    ev.add_argument("--batch", type=int, default=500, help="images per batch (default 500)")
    ev.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    ev.add_argument(
        "--guidance",
        type=weight_list,
        default=[0.0],
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
        metavar="digits|fashion-mnist|FILE.pt2",
        help="judge the samples' classes (class shares of every row, accuracy of conditional "
        "samples): digits or fashion-mnist (the default for runs on those data sets) or a "
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
        help="a mask PNG or lower, upper, left, right, center (default lower). In a PNG white "
        "(>= 128) marks the pixels to FILL and black those to keep, as in Stable Diffusion and "
        "diffusers' inpainting pipelines; RePaint's own masks and diffusers' RePaintPipeline "
        "use the opposite (white = keep): give those with --invert-mask",
    )
    inp.add_argument(
        "--invert-mask",
        action="store_true",
        help="read the mask PNG as white = keep, black = fill (RePaint's convention)",
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
        "--strength",
        type=finite_float,
        default=0.5,
        help="noise level as a share of T (default 0.5)",
    )
    edit.add_argument("--eta", type=nonnegative_float, default=0.0, help="DDIM noise (default 0)")
    _add_editing_options(edit)


def _add_editing_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sampler", default="ddpm", help="ddpm, ddim, dpm++ or heun (default ddpm)"
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="sampling steps (default: inpainting's repaint the paper's 250, or all T when T is "
        "smaller; otherwise the sampler's own: all T for ddpm (edit: the strength·T steps below "
        "its start), 50 ddim, 20 dpm++, 18 heun, at most that many)",
    )
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
        "--guidance",
        type=nonnegative_float,
        default=0.0,
        help="guidance weight w with --class (default 0)",
    )
    _add_run_loading_options(parser)


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
        choices=["inception", "digits", "fashion-mnist"],
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
