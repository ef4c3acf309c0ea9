"""Train the ``fashion-mnist`` feature extractor's classifier and write its safetensors weights.

    sudo apt-get install -y dataset-fashion-mnist      # once: the original idx files
    python tools/train_fashion_classifier.py [--out PATH] [--seed 0] [--epochs 12]

Data: Fashion-MNIST (Xiao et al. 2017) through ddpmkit's built-in ``fashion-mnist`` source, 28×28.
Trained on the 60,000 training images only; the 10,000 test images are never trained on and give
the test accuracy (the model of the last step is kept: no selection on the test set). The
real-vs-real floors — what two samples of real garments score against each other with these
features — are measured and written into the file's metadata with the accuracy:
the Fréchet distance and KID of 10,000 training images (drawn with the seed) against the test
set, and of the two halves of the test set against each other.

Training: AdamW, cosine learning rate with warm-up (the digits tool's), label smoothing 0.1,
random horizontal flips and shifts of up to 2 pixels drawn from an explicit generator.
Everything random comes from ``--seed``; deterministic algorithms are enforced.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from train_digits_classifier import accuracy, learning_rate

from ddpmkit.data import DataConfig, load_dataset
from ddpmkit.fileio import atomic_save_tensors
from ddpmkit.metrics.extractors import FASHION_WEIGHTS_PATH
from ddpmkit.metrics.fashion_cnn import PREPROCESS_VERSION, fashion_cnn, fashion_preprocess
from ddpmkit.metrics.frechet import GaussianStats, frechet_distance
from ddpmkit.metrics.kid import kernel_inception_distance

SCRIPT_VERSION = "1"
MIN_ACCURACY = 0.90
SHIFT = 2


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random horizontal flip and a shift of up to ±2 px per image (background -1 enters)."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    padded = F.pad(x, (SHIFT, SHIFT, SHIFT, SHIFT), value=-1.0)
    dy, dx = torch.randint(0, 2 * SHIFT + 1, (2, n), generator=generator)
    rows = (dy.view(-1, 1) + torch.arange(h)).view(n, 1, h, 1).expand(n, 1, h, w + 2 * SHIFT)
    shifted = padded.gather(2, rows)
    cols = (dx.view(-1, 1) + torch.arange(w)).view(n, 1, 1, w).expand(n, 1, h, w)
    return shifted.gather(3, cols)


@torch.no_grad()
def features(model, x: torch.Tensor, batch: int = 1000) -> np.ndarray:
    model.eval()
    out = torch.cat([model.features(x[i : i + batch]) for i in range(0, len(x), batch)])
    model.train()
    return out.double().numpy()


def floors(a: np.ndarray, b: np.ndarray, seed: int) -> tuple[float, float]:
    """(Fréchet distance, KID) of two sets of real features."""
    fd = frechet_distance(GaussianStats.of(a), GaussianStats.of(b))
    kid = kernel_inception_distance(a, b, 100, min(1000, len(a), len(b)), seed)
    return fd, kid.mean


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=FASHION_WEIGHTS_PATH, help="weights file")
    parser.add_argument("--seed", type=int, default=0, help="init, batches, augmentation")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    start = time.perf_counter()
    train = load_dataset(DataConfig(source="fashion-mnist", image_size=28), progress=False)
    test = load_dataset(DataConfig(source="fashion-mnist:test", image_size=28), progress=False)
    x_train, y_train = fashion_preprocess(train.images_uint8), train.labels
    x_test, y_test = fashion_preprocess(test.images_uint8), test.labels

    torch.manual_seed(args.seed)
    model = fashion_cnn()
    n_params = sum(p.numel() for p in model.parameters())
    gen = torch.Generator().manual_seed(args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = len(x_train) // args.batch_size
    steps = args.epochs * steps_per_epoch
    print(
        f"Fashion-MNIST CNN: {n_params:,} parameters; {len(x_train)} training and "
        f"{len(x_test)} test images; {steps} steps of {args.batch_size} (seed {args.seed})"
    )
    model.train()
    for step in range(steps):
        if step % steps_per_epoch == 0:
            order = torch.randperm(len(x_train), generator=gen)
        at = (step % steps_per_epoch) * args.batch_size
        batch = order[at : at + args.batch_size]
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, steps, args.lr, warmup=200)
        loss = F.cross_entropy(
            model(augment(x_train[batch], gen)), y_train[batch], label_smoothing=0.1
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % steps_per_epoch == 0:
            acc, _ = accuracy(model, x_test, y_test)
            print(f"epoch {(step + 1) // steps_per_epoch}  loss {loss.item():.4f}  test {acc:.4f}")

    model.eval()
    acc, correct = accuracy(model, x_test, y_test)
    pick = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(args.seed))
    train_feats = features(model, x_train[pick[:10_000]])
    test_feats = features(model, x_test)
    fd_train_test, kid_train_test = floors(train_feats, test_feats, args.seed)
    half = torch.randperm(len(x_test), generator=torch.Generator().manual_seed(args.seed + 1))
    a, b = half[: len(half) // 2].numpy(), half[len(half) // 2 :].numpy()
    fd_halves, kid_halves = floors(test_feats[a], test_feats[b], args.seed)
    elapsed = time.perf_counter() - start
    print(
        f"test accuracy {acc:.4f} ({correct}/{len(x_test)}); FD train 10k vs test "
        f"{fd_train_test:.4f}, KID {kid_train_test:.2e}; FD test halves {fd_halves:.4f}, KID "
        f"{kid_halves:.2e}; {elapsed:.0f} s"
    )
    if acc < MIN_ACCURACY:
        print(f"test accuracy below {MIN_ACCURACY}: weights not written")
        return 1
    metadata = {
        "format": "ddpmkit-fashion-cnn",
        "script_version": SCRIPT_VERSION,
        "preprocess": PREPROCESS_VERSION,
        "test_accuracy": repr(acc),
        "test_correct": str(correct),
        "n_train": str(len(x_train)),
        "n_test": str(len(x_test)),
        "fd_train10k_vs_test": repr(fd_train_test),
        "kid_train10k_vs_test": repr(kid_train_test),
        "fd_test_halves": repr(fd_halves),
        "kid_test_halves": repr(kid_halves),
        "seed": str(args.seed),
        "epochs": str(args.epochs),
        "batch_size": str(args.batch_size),
        "parameters": str(n_params),
        "torch_version": torch.__version__,
        "seconds": f"{elapsed:.0f}",
    }
    atomic_save_tensors(args.out, dict(model.state_dict()), metadata)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
