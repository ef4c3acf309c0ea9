"""Speed options of issue 11, measured one by one on the shipped configs (a benchmark, not a test).

For each config and option set: milliseconds per training step (forward, loss, backward, AdamW;
median of ``--repeats`` after 2 warm-up steps) and the bytes autograd keeps for the backward pass
per image (storage counted once; what the second half of a batch adds, so the weights kept
once per step are left out; what gradient checkpointing saves). Prints a markdown table.

    python benchmarks/speed_options.py [--configs digits,cifar10_ddpm] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from scaling_figures import recording_saved  # benchmarks/ is on sys.path when run

from ddpmkit.config import resolve_config
from ddpmkit.diffusion import GaussianDiffusion
from ddpmkit.nn import UNet

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
OPTIONS = {
    "fp32": {},
    "fp32 channels-last": {"channels_last": True},
    "fp32 checkpointing": {"checkpointing": True},
    "bf16": {"amp": True},
    "bf16 channels-last": {"amp": True, "channels_last": True},
    "bf16 checkpointing": {"amp": True, "checkpointing": True},
}


def saved_bytes(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, amp: bool) -> int:
    """Bytes kept for backward by one forward pass, counted by scaling_figures.recording_saved
    (checkpointed layers' kept inputs included)."""
    storages: dict[int, int] = {}
    with recording_saved(storages):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            model(x, t).float().sum()
    return sum(storages.values())


def training_step(config, batch: int, channels_last=False, checkpointing=False, amp=False):
    """(model, x0, step): one training step of ``config``'s U-Net on random images (forward,
    L_simple, backward, AdamW), in the layout and precision asked."""
    model_cfg = config.model
    model_cfg.checkpointing = checkpointing
    torch.manual_seed(0)
    model = UNet(model_cfg).train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    diffusion = GaussianDiffusion.from_config(config.diffusion)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    shape = (batch, config.data.channels, config.data.image_size, config.data.image_size)
    x0 = (torch.rand(shape) * 2 - 1).contiguous(memory_format=fmt)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = diffusion.training_loss(model, x0).loss
        loss.backward()
        optimizer.step()

    return model, x0, step


def measure(config, batch: int, repeats: int, channels_last=False, checkpointing=False, amp=False):
    model, x0, step = training_step(config, batch, channels_last, checkpointing, amp)
    num_steps = config.diffusion.num_steps
    for _ in range(2):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    t = torch.randint(0, num_steps, (batch,))
    half = batch // 2  # per image: what the second half of the batch adds (weights left out)
    per_image = (saved_bytes(model, x0, t, amp) - saved_bytes(model, x0[:half], t[:half], amp)) / (
        batch - half
    )
    return statistics.median(times) * 1e3, per_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="digits,cifar10_ddpm")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    batches = {"digits": 64, "cifar10_ddpm": 8}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| config | batch | option | ms/step | vs fp32 | saved for backward MiB/image |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in args.configs.split(","):
        path = CONFIG_DIR / f"{name}.toml"
        base = None
        for label, option in OPTIONS.items():
            config = resolve_config(path if path.exists() else None)
            batch = batches.get(name, 16)
            repeats = args.repeats if name == "digits" else max(2, args.repeats // 2)
            ms, per_image = measure(config, batch, repeats, **option)
            base = base or ms
            print(
                f"| {name} | {batch} | {label} | {ms:.0f} | {base / ms:.2f}x | "
                f"{per_image / 2**20:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
