"""The measured inputs and the projections of SCALING.md (a benchmark, not a test).

Measured here, for the CIFAR-10 (Ho et al. 2020, ``configs/cifar10_ddpm.toml``), ImageNet-64
(Nichol & Dhariwal 2021) and LSUN-256 (Ho et al. 2020) U-Nets as ddpmkit builds them:

* parameters and training FLOPs per image (forward + backward; ``torch.utils.flop_counter`` on
  the meta device, checked once against a real CPU step of the diffusion loss);
* bytes autograd keeps for the backward pass, deduplicated by storage, in float32 and bfloat16
  autocast, without and with ``model.checkpointing`` (with it, the inputs each checkpointed layer
  keeps for its recomputation are counted too). "Per image" is what a second image adds; "fixed"
  is the rest of batch 1 (under autocast: the bfloat16 copies of the weights);
* images/s that Pillow decodes (ddpmkit's decoder: open, crop, resize) on one core, for the
  formats each data set ships in, from crops of a real photograph (matplotlib's sample
  ``grace_hopper.jpg``; random smooth images when it is missing, which decode faster).

Then it prints the projection tables of SCALING.md from those measurements and the cited figures
in ``PEAK``, ``LINK``, ``HO_THROUGHPUT`` and ``DISK`` below.

    python benchmarks/scaling_figures.py [--peer-improved-diffusion DIR] [--skip-decode]

``--peer-improved-diffusion DIR``: also build OpenAI's ``improved_diffusion`` U-Net (a checkout
of github.com/openai/improved-diffusion at DIR) with the same three sets of flags and print its
parameters and FLOPs, an independent check of the architectures.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.utils.checkpoint
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from ddpmkit.config import DiffusionConfig, config_from_dict, load_config_file
from ddpmkit.data.imaging import decode_image
from ddpmkit.diffusion import GaussianDiffusion
from ddpmkit.nn import UNet, UNetConfig

ROOT = Path(__file__).resolve().parent.parent
MiB = 2**20

# Peak dense tensor-core FLOP/s, SXM parts, from NVIDIA's datasheets (the sparse figures halved).
PEAK = {"A100": {"bf16": 312e12, "tf32": 156e12}, "H100": {"bf16": 989.4e12, "tf32": 494.7e12}}
# Bytes/s per GPU and direction: NVLink (A100 600 GB/s, H100 900 GB/s, both directions summed)
# and one InfiniBand adapter per GPU (DGX A100: 200 Gb/s HDR; DGX H100: 400 Gb/s NDR).
LINK = {"A100": {"nvlink": 300e9, "ib": 25e9}, "H100": {"nvlink": 450e9, "ib": 50e9}}
# Ho et al. 2020, Appendix B, on a TPU v3-8: (steps/s, batch); 4 chips x 123 TFLOP/s bf16 (Cloud
# TPU v3 documentation).
HO_THROUGHPUT = {"CIFAR-10": (21.0, 128), "LSUN-256": (2.2, 64)}
TPU_V3_8 = 4 * 123e12
# This box's checkpoint write rate: 545.6 MiB in 2.819 s (BENCHMARKS.md, "Cost of a checkpoint").
DISK = 545.6 * MiB / 2.819
CHECKPOINT_EVERY = 1000  # TrainConfig.checkpoint_every's default


@dataclass(frozen=True)
class Model:
    name: str
    fields: dict
    size: int
    batch: int  # the paper's global batch
    steps: int  # the paper's training steps
    recipe: str
    images: int  # training images of the data set
    peer_flags: dict  # improved_diffusion.script_util.create_model arguments of the same network


def _cifar_fields() -> dict:
    cfg = config_from_dict(load_config_file(ROOT / "configs" / "cifar10_ddpm.toml"))
    return {k: getattr(cfg.model, k) for k in ("in_channels", "base_channels", "channel_mults",
            "blocks_per_resolution", "attention", "mid_attention", "attention_heads", "dropout",
            "norm_groups", "time_conditioning")}  # fmt: skip


_PEER_COMMON = dict(class_cond=False, use_checkpoint=False, num_heads_upsample=-1)
MODELS = (
    Model(
        name="CIFAR-10",
        fields=_cifar_fields(),
        size=32,
        batch=128,
        steps=800_000,
        recipe="Ho et al. 2020, App. B",
        images=50_000,
        peer_flags=dict(
            _PEER_COMMON,
            image_size=32,
            num_channels=128,
            num_res_blocks=2,
            learn_sigma=False,
            attention_resolutions="16",
            num_heads=1,
            use_scale_shift_norm=False,
            dropout=0.1,
        ),
    ),
    # improved-diffusion's README flags for unconditional ImageNet-64 (L_hybrid, cosine):
    # --num_channels 128 --num_res_blocks 3 --learn_sigma True; defaults: channel_mult 1,2,3,4 at
    # 64x64, attention at 16 and 8, 4 heads, scale-shift norm, dropout 0; batch 128, and the
    # released checkpoint is imagenet64_uncond_100M_1500K (1.5M steps).
    Model(
        name="ImageNet-64",
        fields=dict(
            in_channels=3,
            base_channels=128,
            channel_mults=(1, 2, 3, 4),
            blocks_per_resolution=3,
            attention=("none", "none", "full", "full"),
            mid_attention="full",
            attention_heads=4,
            dropout=0.0,
            norm_groups=32,
            time_conditioning="scale_shift",
            learned_variance=True,
        ),
        size=64,
        batch=128,
        steps=1_500_000,
        recipe="Nichol & Dhariwal 2021 (improved-diffusion README)",
        images=1_281_167,  # ILSVRC-2012 training images, downsampled to 64x64
        peer_flags=dict(
            _PEER_COMMON,
            image_size=64,
            num_channels=128,
            num_res_blocks=3,
            learn_sigma=True,
            attention_resolutions="16,8",
            num_heads=4,
            use_scale_shift_norm=True,
            dropout=0.0,
        ),
    ),
    # Ho et al. 2020: 128 channels, mults 1,1,2,2,4,4, 2 blocks, attention at 16x16; LSUN Bedroom
    # 2.4M steps at batch 64 (Church 1.2M, Cat 1.8M, CelebA-HQ 0.5M).
    Model(
        name="LSUN-256",
        fields=dict(
            in_channels=3,
            base_channels=128,
            channel_mults=(1, 1, 2, 2, 4, 4),
            blocks_per_resolution=2,
            attention=("none", "none", "none", "none", "full", "none"),
            mid_attention="full",
            attention_heads=1,
            dropout=0.0,
            norm_groups=32,
            time_conditioning="add",
        ),
        size=256,
        batch=64,
        steps=2_400_000,
        recipe="Ho et al. 2020, App. B (Bedroom)",
        images=3_033_042,  # bedroom_train_lmdb (43 GB of WebP)
        peer_flags=dict(
            _PEER_COMMON,
            image_size=256,
            num_channels=128,
            num_res_blocks=2,
            learn_sigma=False,
            attention_resolutions="16",
            num_heads=1,
            use_scale_shift_norm=False,
            dropout=0.0,
        ),
    ),
)


def train_flops(module: torch.nn.Module, size: int, device: str) -> int:
    """FLOPs of forward + backward of one image through ``module(x, t)`` with a mean-square loss."""
    with torch.device(device):
        x, t = torch.randn(1, 3, size, size), torch.tensor([10])
    with FlopCounterMode(display=False) as counter:
        module(x, t).float().pow(2).mean().backward()
    return counter.get_total_flops()


class _CountOps(TorchDispatchMode):
    """Counts the ATen operators dispatched (each at least one host call; most one GPU kernel)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def ops_per_step(module: torch.nn.Module, size: int) -> int:
    """ATen operators of forward + backward of ``module`` (on the meta device; the count does
    not depend on the batch)."""
    with torch.device("meta"):
        x, t = torch.randn(2, 3, size, size), torch.tensor([10, 500])
    with _CountOps() as counter:
        module(x, t).float().pow(2).mean().backward()
    return counter.count


def dispatch_seconds(calls: int = 20000) -> float:
    """Host time of one small eager operator on this CPU (``a + 1`` on 4 floats), best of 3."""
    a = torch.ones(4)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(calls):
            a = a + 1
        best = min(best, (time.perf_counter() - start) / calls)
    return best


@contextlib.contextmanager
def recording_saved(storages: dict[int, int]) -> Iterator[None]:
    """Record (storage pointer → bytes) of every tensor autograd saves for backward, and of the
    tensor inputs that ``torch.utils.checkpoint.checkpoint`` keeps to recompute its layer."""

    def remember(tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        remember(tensor)
        return tensor

    original = torch.utils.checkpoint.checkpoint

    def checkpoint(function, *args, **kwargs):
        for a in args:
            if isinstance(a, torch.Tensor):
                remember(a)
        return original(function, *args, **kwargs)

    with mock.patch.object(torch.utils.checkpoint, "checkpoint", checkpoint):
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda v: v):
            yield


def saved_bytes(model: UNet, batch: int, size: int, amp: bool) -> int:
    x = torch.rand(batch, 3, size, size) * 2 - 1
    t = torch.arange(batch) * 97 + 10
    storages: dict[int, int] = {}
    with recording_saved(storages):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            model(x, t).float().sum()
    return sum(storages.values())


def _photo() -> Image.Image | None:
    try:
        import matplotlib

        path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
        return Image.open(path).convert("RGB")
    except Exception:  # noqa: BLE001 - optional content; fall back to synthetic images
        return None


def _crops(width: int, height: int, count: int, seed: int) -> list[Image.Image]:
    """``count`` different ``width``×``height`` images: random crops of the photograph, rescaled
    (or smooth random images when it is missing)."""
    rng = np.random.default_rng(seed)
    photo = _photo()
    images = []
    for _ in range(count):
        if photo is None:
            small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            images.append(Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC))
            continue
        pw, ph = photo.size
        scale = rng.uniform(0.5, 1.0)
        cw, ch = int(pw * scale), int(pw * scale * height / width)
        ch = min(ch, ph)
        x0, y0 = int(rng.integers(0, pw - cw + 1)), int(rng.integers(0, ph - ch + 1))
        box = (x0, y0, x0 + cw, y0 + ch)
        images.append(photo.resize((width, height), Image.Resampling.LANCZOS, box=box))
    return images


def decode_rate(fmt: str, source: tuple[int, int], size: int, count: int, **save) -> float:
    """Images/s of ddpmkit's decoder (open, crop to a square, resize to ``size``) on one thread,
    for ``count`` images of ``source`` = (width, height) encoded as ``fmt``."""
    blobs = []
    for image in _crops(*source, count, seed=size):
        buffer = io.BytesIO()
        image.save(buffer, fmt, **save)
        blobs.append(buffer.getvalue())
    best = float("inf")
    for _ in range(3):  # best of 3 passes: other jobs share this machine
        start = time.perf_counter()
        for blob in blobs:
            decode_image(io.BytesIO(blob), size, 3)
        best = min(best, time.perf_counter() - start)
    return count / best


# What each data set ships as: (label, format, source width × height, save options). CIFAR-10 as
# PNGs is how improved-diffusion's datasets/cifar10.py writes it; downsampled ImageNet-64 is
# 64x64 PNGs; class-conditional ImageNet models decode the ILSVRC JPEGs (500x375 is their most
# common size); the LSUN lmdb stores WebP images 256 pixels on the short side (4:3 assumed here).
DECODE = {
    "CIFAR-10": [("PNG 32x32", "PNG", (32, 32), {})],
    "ImageNet-64": [
        ("PNG 64x64", "PNG", (64, 64), {}),
        ("JPEG q90 500x375 -> 64", "JPEG", (500, 375), {"quality": 90}),
    ],
    "LSUN-256": [
        ("WebP 342x256 -> 256", "WEBP", (342, 256), {}),
        ("JPEG q90 256x256", "JPEG", (256, 256), {"quality": 90}),
        ("PNG 256x256", "PNG", (256, 256), {}),
    ],
}


@dataclass
class Measured:
    params: int
    flops: int  # per training image
    ops: int  # ATen operators per forward + backward
    per_image: dict[tuple[bool, bool], float]  # (checkpointing, bf16) → bytes per image
    fixed: dict[tuple[bool, bool], float]  # the rest of batch 1
    decode: dict[str, float]


def measure(model_spec: Model, skip_decode: bool) -> Measured:
    torch.manual_seed(0)
    with torch.device("meta"):
        meta = UNet(UNetConfig(**model_spec.fields)).train()
    flops = train_flops(meta, model_spec.size, "meta")
    ops = ops_per_step(meta, model_spec.size)
    model = UNet(UNetConfig(**model_spec.fields)).train()
    per_image, fixed = {}, {}
    for checkpointing in (False, True):
        model.config.checkpointing = checkpointing
        for amp in (False, True):
            one = saved_bytes(model, 1, model_spec.size, amp)
            two = saved_bytes(model, 2, model_spec.size, amp)
            per_image[checkpointing, amp] = float(two - one)
            fixed[checkpointing, amp] = float(2 * one - two)
    model.config.checkpointing = False
    decode = {}
    if not skip_decode:
        for label, fmt, source, save in DECODE[model_spec.name]:
            count = 400 if max(source) <= 64 else 60
            decode[label] = decode_rate(fmt, source, model_spec.size, count, **save)
    return Measured(model.num_parameters(), flops, ops, per_image, fixed, decode)


def check_flops_on_cpu(spec: Model) -> tuple[int, int]:
    """FLOPs of one real CPU training step of the diffusion loss vs the meta-device count."""
    torch.manual_seed(0)
    model = UNet(UNetConfig(**spec.fields)).train()
    diffusion = GaussianDiffusion.from_config(DiffusionConfig())
    x = torch.rand(1, 3, spec.size, spec.size) * 2 - 1
    with FlopCounterMode(display=False) as counter:
        diffusion.training_loss(model, x).loss.backward()
    with torch.device("meta"):
        meta = UNet(UNetConfig(**spec.fields)).train()
    return counter.get_total_flops(), train_flops(meta, spec.size, "meta")


def peer_figures(directory: str) -> None:
    sys.path.insert(0, directory)
    from improved_diffusion.script_util import create_model  # type: ignore[import-not-found]

    print("\nimproved-diffusion's own U-Net with the same flags (meta device):\n")
    print("| model | params | train GFLOP/image |")
    print("| --- | --- | --- |")
    for spec in MODELS:
        with torch.device("meta"):
            peer = create_model(**spec.peer_flags).train()
        params = sum(p.numel() for p in peer.parameters())
        flops = train_flops(peer, spec.size, "meta")
        print(f"| {spec.name} | {params / 1e6:.2f}M | {flops / 1e9:.1f} |")


def ho_mfu(results: dict[str, Measured]) -> dict[str, float]:
    """Model FLOP utilisation of Ho et al.'s TPU v3-8 runs, with our FLOP counts."""
    by_name = {spec.name: spec for spec in MODELS}
    out = {}
    for name, (steps_per_s, batch) in HO_THROUGHPUT.items():
        out[name] = steps_per_s * batch * results[by_name[name].name].flops / TPU_V3_8
    return out


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds < 100 * 3600 else f"{seconds / 3600:,.0f} h"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds else "—"


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f}"


def projections(spec: Model, m: Measured, mfu: float, dispatch: float) -> None:
    step_flops = m.flops * spec.batch
    ckpt_bytes = 16 * m.params  # fp32 weights, EMA, AdamW's two moments
    state = 20 * m.params  # + fp32 gradients
    shipped = next(iter(m.decode.values()), float("nan"))  # the format the data set ships in
    cache = spec.images * 3 * spec.size**2
    print(
        f"\n**{spec.name}** ({spec.recipe}: {m.params / 1e6:.1f}M; B = {spec.batch}; "
        f"{step_flops / 1e12:.2f} TFLOP/step; MFU {mfu:.1%}; {spec.steps:,} steps; decoded cache "
        f"{cache / 1e9:,.1f} GB for {spec.images:,} images; checkpoint "
        f"{ckpt_bytes / 2**30:.2f} GiB, {ckpt_bytes / DISK:.1f} s at {DISK / MiB:.0f} MiB/s; "
        f"eager host floor {m.ops * dispatch * 1e3:.1f} ms/step)\n"
    )
    print(
        "| GPUs | per-GPU batch | step A100 / H100 | all-reduce A100 / H100 | to the end A100 / "
        "H100 | images/s (H100) | cache read (H100) | decode cores (H100) | memory/GPU GiB, bf16 "
        "(checkpointed) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = [(1, spec.batch), (8, spec.batch), (64, spec.batch), (64, 2048)]
    for gpus, batch in rows:
        per_gpu = batch // gpus
        steps = spec.steps * spec.batch // batch  # as many images as the paper's run
        compute, reduce = {}, {}
        for g in PEAK:
            compute[g] = m.flops * batch / (gpus * PEAK[g]["bf16"] * mfu)
            bw = LINK[g]["nvlink" if gpus <= 8 else "ib"]
            reduce[g] = 2 * (gpus - 1) / gpus * 4 * m.params / bw  # ring, fp32 gradients
        images = batch / compute["H100"]
        read = images * 3 * spec.size**2
        memory = {
            c: state + m.fixed[c, True] + per_gpu * m.per_image[c, True] for c in (False, True)
        }
        total = {g: steps * (compute[g] + reduce[g]) for g in PEAK}  # no overlap: an upper bound
        label = f"{gpus}" if batch == spec.batch else f"{gpus} (B = {batch}, {steps:,} steps)"
        print(
            f"| {label} | {per_gpu} | {_ms(compute['A100'])} / {_ms(compute['H100'])} "
            f"| {_ms(reduce['A100'])} / {_ms(reduce['H100'])} "
            f"| {_hours(total['A100'])} / {_hours(total['H100'])} "
            f"| {images:,.0f} | {read / 1e6:,.0f} MB/s | {images / shipped:,.1f} | "
            f"{_gib(memory[False])} ({_gib(memory[True])}) |"
        )
    h100_one = m.flops * spec.batch / (PEAK["H100"]["bf16"] * mfu)
    print(
        f"\nCheckpoint every {CHECKPOINT_EVERY} steps on 1 H100: "
        f"{ckpt_bytes / DISK / (CHECKPOINT_EVERY * h100_one):.1%} of the training time; "
        f"in TF32 instead of bf16 every step time doubles (half the peak) and the activations "
        f"take the fp32 column."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peer-improved-diffusion", metavar="DIR")
    parser.add_argument("--skip-decode", action="store_true")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    cpu, meta = check_flops_on_cpu(MODELS[0])
    print(
        f"CIFAR-10 FLOPs of one CPU step of the diffusion loss {cpu / 1e9:.2f} G, on the meta "
        f"device (model + mean square) {meta / 1e9:.2f} G"
    )
    print(f"decoded content: {'grace_hopper.jpg crops' if _photo() else 'synthetic smooth'}\n")
    print(
        "| model | params | train GFLOP/image | saved MiB/image fp32 | bf16 | fp32 checkpointed "
        "| bf16 checkpointed | fixed MiB bf16 (checkpointed) | ATen ops/step "
        "| decode img/s, 1 core |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    results: dict[str, Measured] = {}
    for spec in MODELS:
        m = results[spec.name] = measure(spec, args.skip_decode)
        p = {k: v / MiB for k, v in m.per_image.items()}
        decode = "; ".join(f"{k} {v:,.0f}" for k, v in m.decode.items()) or "—"
        print(
            f"| {spec.name} | {m.params / 1e6:.2f}M | {m.flops / 1e9:.1f} | {p[False, False]:.0f} "
            f"| {p[False, True]:.0f} | {p[True, False]:.0f} | {p[True, True]:.0f} "
            f"| {m.fixed[False, True] / MiB:.0f} ({m.fixed[True, True] / MiB:.0f}) | {m.ops:,} "
            f"| {decode} |",
            flush=True,
        )
    mfu = ho_mfu(results)
    dispatch = dispatch_seconds()
    print(f"\nHost time of one small eager operator on this CPU: {dispatch * 1e6:.2f} us")
    print(
        "\nMFU of Ho et al.'s TPU v3-8 runs with these FLOPs (peak 4 x 123 TFLOP/s): "
        + ", ".join(f"{k} {v:.1%}" for k, v in mfu.items())
        + " (ImageNet-64 takes CIFAR-10's)"
    )
    for spec in MODELS:
        key = "LSUN-256" if spec.name == "LSUN-256" else "CIFAR-10"
        projections(spec, results[spec.name], mfu[key], dispatch)
    if args.peer_improved_diffusion:
        peer_figures(args.peer_improved_diffusion)


if __name__ == "__main__":
    main()
