"""The measured inputs of SCALING.md (a benchmark, not a test).

For the CIFAR-10 (Ho et al. 2020), ImageNet-64 (Nichol & Dhariwal 2021) and LSUN-256 (Ho et al.)
U-Nets as ddpmkit builds them: parameters, training FLOPs per image (forward + backward,
``torch.utils.flop_counter``), bytes autograd keeps for the backward pass per image (storages
counted once; per image = what a second image adds, so the weights that convolutions keep are
left out) in float32 and bfloat16 autocast, with and without ``model.checkpointing``; and
how fast this CPU decodes + resizes PNG files of each size with Pillow (one core).

    python benchmarks/scaling_figures.py
"""

from __future__ import annotations

import io
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from ddpmkit.config import DiffusionConfig
from ddpmkit.data.imaging import decode_image
from ddpmkit.diffusion import GaussianDiffusion
from ddpmkit.nn import UNet, UNetConfig

MODELS = {
    # configs/cifar10_ddpm.toml: Ho et al. 2020, 35.7M
    "CIFAR-10 32x32": (
        dict(
            in_channels=3,
            base_channels=128,
            channel_mults=(1, 2, 2, 2),
            blocks_per_resolution=2,
            attention=("none", "full", "none", "none"),
            mid_attention="full",
            attention_heads=1,
            dropout=0.1,
            norm_groups=32,
            time_conditioning="add",
            norm_eps=1e-6,
        ),
        32,
    ),
    # improved-diffusion's ImageNet-64 flags: 128 channels, mults 1,2,3,4, 3 blocks, attention at
    # 16 and 8, 4 heads, scale-shift norm, learned sigma
    "ImageNet 64x64": (
        dict(
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
        64,
    ),
    # Ho et al. 2020, LSUN/CelebA-HQ 256: 128 channels, mults 1,1,2,2,4,4, 2 blocks, attention at
    # 16x16
    "LSUN 256x256": (
        dict(
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
            norm_eps=1e-6,
        ),
        256,
    ),
}


def saved_bytes(model: UNet, x: torch.Tensor, t: torch.Tensor, amp: bool) -> int:
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda v: v):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            model(x, t).float().sum()
    return sum(storages.values())


def decode_rate(size: int, count: int = 64) -> float:
    """Images/s of decoding a PNG of ``size``×``size`` (smooth random content) and resizing it to
    itself through ddpmkit's decoder, on one thread."""
    rng = np.random.default_rng(0)
    blobs = []
    for _ in range(count):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        blobs.append(buffer.getvalue())
    start = time.perf_counter()
    for blob in blobs:
        decode_image(io.BytesIO(blob), size, 3)
    return count / (time.perf_counter() - start)


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print(
        "| model | params | train GFLOP/image | saved MiB/image fp32 | bf16 | "
        "fp32 checkpointed | bf16 checkpointed | PNG decode img/s (1 core) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, (fields, size) in MODELS.items():
        torch.manual_seed(0)
        model = UNet(UNetConfig(**fields)).train()
        variance = "learned_range" if fields.get("learned_variance") else "fixed_small"
        loss = "hybrid" if fields.get("learned_variance") else "l2"
        diffusion = GaussianDiffusion.from_config(DiffusionConfig(variance=variance, loss=loss))
        x = torch.rand(1, 3, size, size) * 2 - 1
        with FlopCounterMode(display=False) as counter:
            diffusion.training_loss(model, x).loss.backward()
        flops = counter.get_total_flops()
        x2, t1, t2 = torch.cat([x, x]), torch.tensor([10]), torch.tensor([10, 500])
        saved = {}
        for checkpointing in (False, True):
            model.config.checkpointing = checkpointing
            for amp in (False, True):
                # per image: what a second image adds (the weights and their bf16 copies are
                # kept once per step, whatever the batch)
                one = saved_bytes(model, x, t1, amp)
                saved[checkpointing, amp] = (saved_bytes(model, x2, t2, amp) - one) / 2**20
        model.config.checkpointing = False
        print(
            f"| {name} | {model.num_parameters() / 1e6:.1f}M | {flops / 1e9:.1f} | "
            f"{saved[False, False]:.0f} | {saved[False, True]:.0f} | {saved[True, False]:.0f} | "
            f"{saved[True, True]:.0f} | {decode_rate(size):.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
