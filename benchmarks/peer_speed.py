"""ddpmkit against diffusers' UNet2DModel on the identical network, and both against the machine's
peak (a benchmark, not a test; needs ``pip install diffusers``).

For each config (digits, CIFAR-10) ddpmkit's U-Net gets random weights, which are copied into a
``UNet2DModel`` through the diffusers mapping (``ddpmkit.interop``; ``model.time_frequencies =
diffusers`` so that both compute the same function). The script first checks that they do: the
largest output difference on one batch in float64 and float32, and the FLOPs of both. Then, in
float32 and in bfloat16 autocast, alternating the two libraries call by call (ABAB…, medians, so
that drift hits both alike):

* training images/s: one step = forward, MSE to ε, backward, AdamW step; same batch, same
  optimizer settings for both;
* sampling images/s: one network call per image under ``torch.no_grad``;
* MFU: the step's FLOPs (``torch.utils.flop_counter``) per second over the peak FLOP/s of a large
  square matmul of the same precision, measured in the same run (best of sizes and repeats, at the
  start and at the end).

    python benchmarks/peer_speed.py [--device cpu|cuda] [--repeats 20] [--profile]
        [--configs digits,cifar10_ddpm] [--precisions fp32,bf16] [--variant NAME]

On a GPU it also reports peak memory (``torch.cuda.max_memory_allocated``) of a training step and
the largest batch that fits (doubling search); "fp32" there means PyTorch's default TF32
convolutions, and the peak matmul is allowed TF32 too.

``--profile`` shows instead where one call of each library spends its time (``torch.profiler``,
summed by part of the network; ``--rows N`` adds the N slowest operators). ``--variant`` also
times a candidate change to ddpmkit's network, applied by patching modules of the built model
(never the source), as a third contestant; the output check shows whether it still computes the
same function.
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ddpmkit.config import resolve_config
from ddpmkit.interop.diffusers_config import unet_to_diffusers
from ddpmkit.interop.diffusers_weights import to_diffusers
from ddpmkit.nn import UNet

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
BATCH = {"digits": 64, "cifar10_ddpm": 8}  # the digits recipe's batch; CIFAR-10 small on a CPU
LIBRARIES = ("ddpmkit", "diffusers")
Step = Callable[[], None]
VARIANTS = ("none", "transposed-upsample", "linear-attention")


def _diffusers():
    try:
        import diffusers
    except ImportError:
        raise SystemExit(
            "benchmarks/peer_speed.py compares against diffusers: pip install diffusers"
        ) from None
    diffusers.utils.logging.set_verbosity_error()
    return diffusers


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_matmul(
    device: torch.device, dtype: torch.dtype, sizes=(1024, 2048, 3072, 4096), repeats: int = 4
) -> float:
    """FLOP/s of the fastest ``n×n @ n×n`` matmul over ``sizes`` and ``repeats`` (on this CPU
    the fp32 rate depends on n: 105 GFLOP/s at 1536, 194 at 3072, 174 at 4096)."""
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        out = torch.mm(a, b)  # warm-up, and the output buffer
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            _sync(device)
            best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


# ------------------------------------------------------------------------------ the networks


def networks(name: str, device: torch.device) -> tuple[object, UNet, nn.Module]:
    """The config, ddpmkit's U-Net with random weights, and UNet2DModel with the same weights."""
    diffusers = _diffusers()
    config = resolve_config(CONFIGS / f"{name}.toml", ["model.time_frequencies=diffusers"])
    torch.manual_seed(0)
    ours = UNet(config.model)
    with torch.no_grad():  # random weights everywhere (a fresh U-Net has zero output convs)
        for p in ours.parameters():
            p.normal_(std=0.05) if p.ndim > 1 else p.uniform_(0.9, 1.1)
    theirs = diffusers.UNet2DModel(**unet_to_diffusers(config.model, config.data.image_size))
    theirs.load_state_dict(to_diffusers(ours.state_dict(), config.model))
    return config, ours.to(device), theirs.to(device)


def call_of(library: str) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]:
    """How ``library``'s network is called ("variant": ddpmkit's, patched)."""
    if library == "diffusers":
        return lambda model, x, t: model(x, t).sample
    return lambda model, x, t: model(x, t)


def max_difference(ours: UNet, theirs: nn.Module, shape, device, dtype) -> float:
    """Largest |ddpmkit - diffusers| over one batch, eval mode (no dropout), in ``dtype``."""
    generator = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(shape, device=device, generator=generator, dtype=dtype)
    t = torch.randint(0, 1000, (shape[0],), device=device, generator=generator)
    ours.eval().to(dtype), theirs.eval().to(dtype)
    with torch.no_grad():
        diff = float((ours(x, t) - theirs(x, t).sample).abs().max())
    ours.train().float(), theirs.train().float()
    return diff


# ------------------------------------------------------------------------------ the work timed


def make_steps(model: nn.Module, library: str, shape, device, amp: bool) -> dict[str, Step]:
    """A training step and a sampling call on a fixed batch (the same for every library)."""
    call = call_of(library)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(shape, device=device, generator=generator)
    t = torch.randint(0, 1000, (shape[0],), device=device, generator=generator)
    eps = torch.randn(shape, device=device, generator=generator)

    def train() -> None:
        model.train()  # dropout on (CIFAR-10's 0.1)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = call(model, x, t)
        F.mse_loss(out.float(), eps).backward()
        optimizer.step()

    @torch.no_grad()
    def sample() -> None:
        model.eval()  # as a sampler calls it: no dropout
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            call(model, x, t)

    return {"train": train, "sample": sample}


def timed(fn: Step, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def flops_of(fn: Step) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def alternate(fns: dict[str, Step], device, warmup: int, repeats: int) -> dict[str, float]:
    """Median seconds of each function, called in turn A B A B … after ``warmup`` rounds."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(timed(fn, device))
    return {k: statistics.median(v) for k, v in times.items()}


def largest_batch(make_train: Callable[[int], Step], device, limit: int = 65536) -> int:
    """Largest power-of-two batch (up to ``limit``) whose training step runs without running out
    of memory; 0 if not even one image fits."""
    batch, fits = 1, 0
    while batch <= limit:
        try:
            make_train(batch)()
            _sync(device)
            fits = batch
        except torch.OutOfMemoryError:
            break
        finally:
            gc.collect()
            torch.cuda.empty_cache()
        batch *= 2
    return fits


def memory_report(models, shape, device) -> None:
    """Peak memory of a training step at ``shape`` and the largest batch, per library/precision."""
    rest = shape[1:]
    for amp in (False, True):
        for library, model in models.items():
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            make_steps(model, library, shape, device, amp)["train"]()
            _sync(device)
            peak = torch.cuda.max_memory_allocated(device) / 2**30
            most = largest_batch(
                lambda b, m=model, lib=library, amp=amp: make_steps(
                    m, lib, (b, *rest), device, amp
                )["train"],
                device,
            )
            print(
                f"  {library} {'bf16' if amp else 'fp32'}: peak memory {peak:.2f} GiB at batch "
                f"{shape[0]}; largest power-of-two batch that fits: {most}"
                + (" (the search's limit)" if most == 65536 else ""),
                flush=True,
            )


# ------------------------------------------------------------------------------ profiling


CATEGORIES = {  # operator name fragments → a part of the network
    "convolutions": ("convolution",),
    "attention (bmm, softmax, sdpa)": ("bmm", "softmax", "scaled_dot_product"),
    "linear layers (mm, addmm)": ("aten::mm", "aten::addmm"),
    "GroupNorm + SiLU": ("group_norm", "silu"),
    "dropout masks": ("bernoulli",),
    "casts (copy_)": ("aten::copy_",),
}


def categorise(events, key: str) -> dict[str, float]:
    """Milliseconds of one profiled call by part: operator self times matched by
    :data:`CATEGORIES`, the optimizer's ``step``/``zero_grad`` inclusive, the rest as "other"."""
    total = sum(getattr(e, key) for e in events)
    parts = dict.fromkeys([*CATEGORIES, "AdamW step + zero_grad", "other"], 0.0)
    inclusive = key.replace("self_", "")
    for e in events:
        if e.key.startswith("Optimizer."):
            parts["AdamW step + zero_grad"] += getattr(e, inclusive)
            continue
        for part, fragments in CATEGORIES.items():
            if any(f in e.key for f in fragments):
                parts[part] += getattr(e, key)
                break
    parts["other"] = total - sum(parts.values())
    return {k: v / 1e3 for k, v in parts.items()} | {"total": total / 1e3}


def profile(models, shape, device, amp: bool, rows: int) -> None:
    """Where one training step and one sampling call of each library spend their time
    (``torch.profiler``): a summary by part, then the ``rows`` slowest operators."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    precision = "bf16" if amp else "fp32"
    summaries = {}
    for kind in ("train", "sample"):
        for library, model in models.items():
            fn = make_steps(model, library, shape, device, amp)[kind]
            fn(), fn()
            with torch_profile(activities=activities) as prof:
                fn()
                _sync(device)
            events = prof.key_averages()
            summaries[kind, library] = categorise(events, key)
            if rows:
                print(f"\n### {library}, {kind}, {precision}")
                print(events.table(sort_by=key, row_limit=rows, max_name_column_width=40))
    columns = list(summaries)
    print(f"\nms of operator time in one call, {precision} (share of the call):")
    print("| part | " + " | ".join(f"{lib} {kind}" for kind, lib in columns) + " |")
    print("|" + " --- |" * (len(columns) + 1))
    for part in summaries[columns[0]]:
        cells = [
            f"{summaries[c][part]:.0f} ({summaries[c][part] / summaries[c]['total']:.0%})"
            for c in columns
        ]
        print(f"| {part} | " + " | ".join(cells) + " |")


# ------------------------------------------------------------------------------ variants


def transposed_upsample(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(nearest×2(x))`` as one stride-2 transposed conv with a 4x4 kernel: the same
    function with 16 instead of 36 multiply-adds per input pixel and channel pair.

    Along each axis, output ``2i`` is ``w0·x[i-1] + (w1+w2)·x[i]`` and output ``2i+1`` is
    ``(w0+w1)·x[i] + w2·x[i+1]``; a transposed conv (stride 2, padding 1) with taps
    ``[w2, w1+w2, w0+w1, w0]`` computes exactly these. A candidate for
    ``ddpmkit.nn.blocks.Upsample.forward``.
    """

    def taps(w: torch.Tensor, dim: int) -> torch.Tensor:
        a, b, c = w.unbind(dim)
        return torch.stack([c, b + c, a + b, a], dim)

    kernel = taps(taps(conv.weight, 2), 3).transpose(0, 1)  # (in, out, 4, 4)
    return F.conv_transpose2d(x, kernel, conv.bias, stride=2, padding=1)  # autocast: bf16


def linear_attention_forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``FullAttention.forward`` with the 1x1 convs as ``F.linear`` on (B, H·W, C) rows, so that
    q, k and v come out with unit stride in their last dim and ``scaled_dot_product_attention``
    can take its fused (flash) CPU kernel instead of the composite fallback; the same function
    and weights. A candidate for ``ddpmkit.nn.attention.FullAttention.forward``."""
    b, c, h, w = x.shape
    heads, d = module.heads, module.head_dim
    rows = module.norm(x).flatten(2).transpose(1, 2)  # (B, N, C)
    qkv = F.linear(rows, module.qkv.weight.flatten(1), module.qkv.bias)  # (B, N, 3·heads·d)
    q, k, v = qkv.view(b, h * w, 3, heads, d).permute(2, 0, 3, 1, 4).unbind(0)  # (B, heads, N, d)
    out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h * w, heads * d)
    out = F.linear(out, module.proj.weight.flatten(1), module.proj.bias)  # (B, N, C)
    return x + out.transpose(1, 2).reshape(b, c, h, w)


def apply_variant(model: UNet, variant: str) -> None:
    """Patch the built ddpmkit model with a candidate change named ``variant``."""
    from ddpmkit.nn.attention import FullAttention
    from ddpmkit.nn.blocks import Upsample

    for module in model.modules():  # instance attributes shadow the class's forward
        if variant == "transposed-upsample" and isinstance(module, Upsample):
            module.forward = lambda x, conv=module.conv: transposed_upsample(conv, x)
        if variant == "linear-attention" and isinstance(module, FullAttention):
            module.forward = lambda x, m=module: linear_attention_forward(m, x)
    if variant not in VARIANTS[1:]:
        raise SystemExit(f"unknown --variant {variant!r}; one of {', '.join(VARIANTS)}")


# ------------------------------------------------------------------------------ main


def _rate(images_per_s: float) -> str:
    return f"{images_per_s:.2f}" if images_per_s < 10 else f"{images_per_s:.1f}"


def print_table(rows, peaks, variant: str) -> None:
    name_of = {False: "fp32", True: "bf16"}
    extra = variant != "none"
    print(
        "\n| config | batch | precision | work | ddpmkit img/s | diffusers img/s | "
        "ddpmkit/diffusers | ddpmkit MFU | diffusers MFU |"
        + (f" ddpmkit+{variant} img/s | its ratio to diffusers | to ddpmkit |" if extra else "")
    )
    print("|" + " --- |" * (12 if extra else 9))
    for name, batch, amp, kind, flops, seconds in rows:
        rate = {k: batch / s for k, s in seconds.items()}
        # the network's FLOPs, counted on ddpmkit's step (the flop counter does not see the fused
        # CPU attention kernel diffusers' SDPA call takes, so it undercounts diffusers' step)
        mfu = {k: flops["ddpmkit"] / seconds[k] / peaks[amp] for k in seconds}
        line = (
            f"| {name} | {batch} | {name_of[amp]} | {kind} | {_rate(rate['ddpmkit'])} | "
            f"{_rate(rate['diffusers'])} | {rate['ddpmkit'] / rate['diffusers']:.2f}x | "
            f"{mfu['ddpmkit']:.1%} | {mfu['diffusers']:.1%} |"
        )
        if extra:
            line += (
                f" {_rate(rate['variant'])} | {rate['variant'] / rate['diffusers']:.2f}x | "
                f"{rate['variant'] / rate['ddpmkit']:.2f}x |"
            )
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--repeats",
        type=int,
        default=20,
        help="timed calls per library and row (digits; CIFAR-10 gets half, at least 2)",
    )
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--configs", default="digits,cifar10_ddpm")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--profile", action="store_true", help="profile instead of timing")
    parser.add_argument("--rows", type=int, default=0, help="slowest operators --profile lists")
    parser.add_argument(
        "--variant",
        default="none",
        choices=VARIANTS,
        help="also time ddpmkit with this candidate change (a third contestant)",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    _diffusers()
    if device.type == "cuda":
        # PyTorch runs float32 convolutions on TF32 tensor cores by default (cudnn.allow_tf32);
        # let the float32 matmul of the peak do the same, or the convs would beat the "peak"
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32
    name_of = {False: "fp32", True: "bf16"}
    precisions = [{"fp32": False, "bf16": True}[p] for p in args.precisions.split(",")]
    started = time.perf_counter()
    dtypes = {False: torch.float32, True: torch.bfloat16}
    sizes = (4096, 8192) if device.type == "cuda" else (1024, 2048, 3072, 4096)
    peaks = {amp: peak_matmul(device, dtypes[amp], sizes) for amp in precisions}
    print(
        f"device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
        + f", torch {torch.__version__}, {torch.get_num_threads()} threads; peak "
        + ", ".join(f"{name_of[a]} matmul {p / 1e9:.0f} GFLOP/s" for a, p in peaks.items()),
        flush=True,
    )
    rows = []
    for name in args.configs.split(","):
        config, ours, theirs = networks(name, device)
        models = {"ddpmkit": ours, "diffusers": theirs}
        if args.variant != "none":
            models["variant"] = copy.deepcopy(ours)
            apply_variant(models["variant"], args.variant)
        size, ch = config.data.image_size, config.data.channels
        batch = BATCH.get(name, 16)
        shape = (batch, ch, size, size)
        check = (2, ch, size, size)
        print(f"\n{name}: {ours.num_parameters() / 1e6:.2f}M parameters, batch {batch}")
        for k, model in models.items():
            if k != "diffusers":
                diff64 = max_difference(model, theirs, check, device, torch.float64)
                diff32 = max_difference(model, theirs, shape, device, torch.float32)
                print(
                    f"  max |{k} - diffusers| on one batch: {diff64:.1e} in float64, "
                    f"{diff32:.1e} in float32",
                    flush=True,
                )
        if args.profile:
            for amp in precisions:
                profile(models, shape, device, amp, args.rows)
            continue
        repeats = args.repeats if name == "digits" else max(2, args.repeats // 2)
        for amp in precisions:
            steps = {k: make_steps(m, k, shape, device, amp) for k, m in models.items()}
            for kind in ("train", "sample"):
                fns = {k: s[kind] for k, s in steps.items()}
                flops = {k: flops_of(fn) for k, fn in fns.items()}
                seconds = alternate(fns, device, args.warmup, repeats)
                rows.append((name, batch, amp, kind, flops, seconds))
                print(
                    f"  {kind} {name_of[amp]}: "
                    + ", ".join(
                        f"{k} {batch / s:.1f} img/s ({flops[k] / batch / 1e9:.2f} GFLOP/img)"
                        for k, s in seconds.items()
                    ),
                    flush=True,
                )
        if device.type == "cuda":
            del steps, fns  # the timing's optimizers and their states
            for model in models.values():
                model.zero_grad(set_to_none=True)
            memory_report(models, shape, device)
        del ours, theirs, models
        gc.collect()
    if args.profile:
        return
    for amp in precisions:  # the peak again, after the work: the better of the two counts
        peaks[amp] = max(peaks[amp], peak_matmul(device, dtypes[amp], sizes))
    print(
        "\npeak matmul (best of start and end): "
        + ", ".join(f"{name_of[a]} {p / 1e9:.0f} GFLOP/s" for a, p in peaks.items())
    )
    print_table(rows, peaks, args.variant)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
