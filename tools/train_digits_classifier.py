"""Train the ``digits`` feature extractor's classifier and write its safetensors weights.

    python tools/train_digits_classifier.py [--out PATH] [--seed 0] [--steps 1500]

Data: scikit-learn's 1797 digits, upscaled to 16×16 by :func:`ddpmkit.data.load_dataset`.
A stratified 20 % of them (``ddpmkit.metrics.digits_cnn.held_out_split(labels, seed)``) is held
out and never trained on; the model of the last step is kept (no selection on the held-out set)
and its held-out accuracy is written into the file's metadata with the split seed and the image
counts, so ``tests/test_extractors.py`` can rebuild the split and check the number.

Training: AdamW, cosine learning rate with warm-up, label smoothing 0.1, and light augmentation
drawn from an explicit generator: every image gets a random affine map (translation ±1 px,
scale ±10 %, rotation ±10°, bilinear, black outside), so that the features do not hinge on the
exact pixel grid of the upscaled digits and carry over to generated samples. Everything random
comes from ``--seed`` (the split, the initial weights, batches, augmentation), deterministic
algorithms are enforced and one thread is used, so on the CPU the weights come out bit for bit
the same on the same machine and PyTorch version (checked: three runs, identical tensors; the
file's bytes may still differ, as safetensors writes the metadata in no fixed order, which is
why the extractor's fingerprint hashes the tensors). About 60 s on one core.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ddpmkit.data import DataConfig, load_dataset
from ddpmkit.fileio import atomic_save_tensors
from ddpmkit.metrics.digits_cnn import (
    HELD_OUT_FRACTION,
    PREPROCESS_VERSION,
    DigitsCNN,
    held_out_split,
    preprocess,
)
from ddpmkit.metrics.extractors import DIGITS_WEIGHTS_PATH

SCRIPT_VERSION = "1"
MIN_ACCURACY = 0.97


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random affine map per image of ``x`` (float in [-1, 1]): shift ±1 px, scale ±10 %,
    rotation ±10°; bilinear sampling, black (-1) outside the image."""
    n, _, h, _ = x.shape
    u = torch.rand(n, 4, generator=generator) * 2.0 - 1.0  # uniform in [-1, 1]
    scale = 1.0 + 0.1 * u[:, 0]
    angle = math.radians(10.0) * u[:, 1]
    shift = u[:, 2:] * (2.0 / h)  # ±1 px in normalized coordinates (align_corners=False)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x + 1.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out - 1.0


@torch.no_grad()
def accuracy(model: DigitsCNN, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
    model.eval()
    correct = int((model(x).argmax(1) == y).sum())
    model.train()
    return correct / len(y), correct


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DIGITS_WEIGHTS_PATH, help="weights file")
    parser.add_argument("--seed", type=int, default=0, help="split, init, batches, augmentation")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    start = time.perf_counter()

    data = load_dataset(DataConfig(source="digits", image_size=16, channels=1), progress=False)
    assert data.labels is not None
    train_idx, held_idx = held_out_split(data.labels.numpy(), args.seed)
    x_all = preprocess(data.images_uint8)
    x_train, y_train = x_all[train_idx], data.labels[train_idx]
    x_held, y_held = x_all[held_idx], data.labels[held_idx]

    torch.manual_seed(args.seed)
    model = DigitsCNN()
    n_params = sum(p.numel() for p in model.parameters())
    gen = torch.Generator().manual_seed(args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    print(
        f"digits CNN: {n_params:,} parameters; {len(train_idx)} training and {len(held_idx)} "
        f"held-out images (seed {args.seed}); {args.steps} steps of {args.batch_size}"
    )

    model.train()
    order = torch.randperm(len(train_idx), generator=gen)
    pos = 0
    for step in range(args.steps):
        if pos + args.batch_size > len(order):
            order, pos = torch.randperm(len(train_idx), generator=gen), 0
        batch = order[pos : pos + args.batch_size]
        pos += args.batch_size
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr, warmup=100)
        logits = model(augment(x_train[batch], gen))
        loss = F.cross_entropy(logits, y_train[batch], label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 500 == 0 or step + 1 == args.steps:
            acc, _ = accuracy(model, x_held, y_held)
            print(f"step {step + 1:5d}  loss {loss.item():.4f}  held-out accuracy {acc:.4f}")

    model.eval()
    acc, correct = accuracy(model, x_held, y_held)
    train_acc, _ = accuracy(model, x_train, y_train)
    elapsed = time.perf_counter() - start
    print(
        f"held-out accuracy {acc:.4f} ({correct}/{len(held_idx)}), training accuracy "
        f"{train_acc:.4f}; {elapsed:.1f} s"
    )
    if acc < MIN_ACCURACY:
        print(f"held-out accuracy below {MIN_ACCURACY}: weights not written")
        return 1
    metadata = {
        "format": "ddpmkit-digits-cnn",
        "script_version": SCRIPT_VERSION,
        "preprocess": PREPROCESS_VERSION,
        "held_out_accuracy": repr(acc),
        "held_out_correct": str(correct),
        "held_out_fraction": repr(HELD_OUT_FRACTION),
        "split_seed": str(args.seed),
        "n_train": str(len(train_idx)),
        "n_held_out": str(len(held_idx)),
        "train_accuracy": repr(train_acc),
        "steps": str(args.steps),
        "batch_size": str(args.batch_size),
        "parameters": str(n_params),
        "torch_version": torch.__version__,
    }
    atomic_save_tensors(args.out, dict(model.state_dict()), metadata)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
