"""A peer trained for the same minutes on the same data, scored like ddpmkit's runs (a benchmark,
not a test; needs ``pip install diffusers``, which imports beside torch 2.13 only without
torchvision; one job at a time on a quiet machine).

    python benchmarks/peer_quality.py --data fashion-mnist --size 28 --minutes 10 --seed 0 \
        [--batch 128] [--lr 1e-3] [--amp] [--n 1000] [--out runs/peer/results.jsonl]

The peer is diffusers' ``UNet2DModel`` with its ``DDPMScheduler`` (1000 linear-β steps, ε
prediction, MSE), trained with AdamW (linear warm-up over 100 steps, then constant), gradient
clipping at 1 and diffusers' own ``EMAModel`` (decay 0.999 with its warm-up), on the same images
ddpmkit reads (``ddpmkit.data.load_dataset``, scaled to [−1, 1]) until the time is up (the
clock counts only training steps). Then ``--n`` samples from the EMA weights with diffusers'
``DDIMScheduler`` (50 steps, η = 0), scored with the data set's ddpmkit features against its
reference (Fashion-MNIST: the CNN, against the 10,000 test images; digits: the digits CNN,
against the 1,797 digits): Fréchet distance, KID, precision/recall, and for Fashion-MNIST the
share of samples per predicted class (are all ten classes there).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ddpmkit.data import DataConfig, from_uint8, load_dataset, to_uint8
from ddpmkit.evaluation.quality import default_features, default_reference
from ddpmkit.evaluation.scores import score_sets
from ddpmkit.metrics.classifier import class_shares, predicted_classes
from ddpmkit.metrics.extractors import extract_features, load_extractor
from ddpmkit.metrics.frechet import GaussianStats


def peer_unet(size: int, channels: int):
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=size,
        in_channels=channels,
        out_channels=channels,
        layers_per_block=1,
        block_out_channels=(32, 64, 128),
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )


def train(args, images: torch.Tensor):
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    torch.manual_seed(args.seed)
    model = peer_unet(args.size, images.shape[1])
    ema = EMAModel(model.parameters(), decay=0.999, use_ema_warmup=True)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    g = torch.Generator().manual_seed(args.seed)
    spent, step, rates = 0.0, 0, []
    while spent < 60 * args.minutes:
        start = time.perf_counter()
        index = torch.randint(0, len(images), (args.batch,), generator=g)
        x0 = from_uint8(images[index])
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (args.batch,), generator=g)
        x_t = scheduler.add_noise(x0, noise, t)
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / 100)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.amp):
            out = model(x_t, t).sample
        loss = F.mse_loss(out.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.step(model.parameters())
        step += 1
        took = time.perf_counter() - start
        spent += took
        rates.append(args.batch / took)
        if step % 200 == 0:
            print(f"step {step}: loss {loss.item():.4f}, {spent / 60:.1f} min", flush=True)
    ema.copy_to(model.parameters())
    return model.eval(), step, spent, sorted(rates)[len(rates) // 2]


@torch.no_grad()
def sample(model, args, channels: int) -> torch.Tensor:
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(num_train_timesteps=1000, clip_sample=True)
    scheduler.set_timesteps(50)
    out = []
    g = torch.Generator().manual_seed(10_000 + args.seed)
    for start in range(0, args.n, 250):
        x = torch.randn(min(250, args.n - start), channels, args.size, args.size, generator=g)
        for t in scheduler.timesteps:
            eps = model(x, t).sample
            x = scheduler.step(eps, t, x, eta=0.0).prev_sample
        out.append(to_uint8(x.clamp(-1, 1)))
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--amp", action="store_true", help="bf16 autocast for the network")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--out", default="runs/peer/results.jsonl")
    args = parser.parse_args()
    data = DataConfig(source=args.data, image_size=args.size)
    images = load_dataset(data, progress=False).images_uint8
    model, steps, spent, rate = train(args, images)
    started = time.perf_counter()
    samples = sample(model, args, images.shape[1])
    sampling_s = time.perf_counter() - started
    name = default_features(data)
    extractor = load_extractor(name)
    reference = load_dataset(default_reference(data), progress=False).images_uint8
    real = extract_features(extractor, reference, progress=False)
    fake = extract_features(extractor, samples, progress=False)
    scores = score_sets(GaussianStats.of(real), GaussianStats.of(fake), real, fake, seed=args.seed)
    shares = class_shares(*predicted_classes(extractor.logits, samples))
    record = {
        "peer": "diffusers UNet2DModel",
        "data": args.data,
        "seed": args.seed,
        "minutes": args.minutes,
        "steps": steps,
        "train_s": round(spent, 1),
        "images_per_s": round(rate, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "amp": args.amp,
        "n": args.n,
        "sampling_s": round(sampling_s, 1),
        "fd": scores.fid,
        "kid": scores.kid.mean if scores.kid else math.nan,
        "precision": scores.precision_recall.precision if scores.precision_recall else math.nan,
        "recall": scores.precision_recall.recall if scores.precision_recall else math.nan,
        "class_shares": [round(v, 3) for v in shares],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
