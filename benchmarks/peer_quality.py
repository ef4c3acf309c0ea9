"""A peer trained for the same minutes on the same data, scored like ddpmkit's runs (a benchmark,
not a test; one job at a time on a quiet machine).

    python benchmarks/peer_quality.py --peer diffusers --data fashion-mnist --size 28 \
        --minutes 10 --seed 0 [--batch 128] [--lr 1e-3] [--amp] [--n 1000] \
        [--out runs/peer/results.jsonl]

Two peers, each in the environment it imports in:

- ``--peer diffusers`` (``pip install diffusers`` beside torch 2.13, without torchvision):
  ``UNet2DModel`` with its ``DDPMScheduler`` (1000 linear-β steps, ε prediction, MSE), AdamW,
  diffusers' own ``EMAModel`` (decay 0.999 with its warm-up); samples from ``DDIMScheduler``
  (50 steps, η = 0).
- ``--peer lucidrains`` (its own venv: ``pip install torch==2.14.1 torchvision==0.29.1
  denoising-diffusion-pytorch`` and ``pip install -e .`` for ddpmkit's data and features):
  ``denoising_diffusion_pytorch``'s ``Unet`` (dim 32, dim_mults 1, 2, 4: the diffusers peer's
  widths) inside its ``GaussianDiffusion`` with the package defaults (sigmoid schedule, v
  prediction, its loss weighting), Adam with its Trainer's betas (0.9, 0.99), ``ema_pytorch``'s
  ``EMA`` as its Trainer sets it (β 0.995, updated every 10 steps); samples from its own DDIM
  (``sampling_timesteps=50``, η = 0).

Both train on the same images ddpmkit reads (``ddpmkit.data.load_dataset``), with the same loop:
learning rate warmed up linearly over 100 steps, then constant; gradient clipping at 1; batches
drawn with replacement; the clock counts only training steps and stops at ``--minutes``. Then
``--n`` samples from the EMA weights, scored with the data set's ddpmkit features against its
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


class DiffusersPeer:
    """diffusers' UNet2DModel + DDPMScheduler (ε, linear β), AdamW, EMAModel(0.999)."""

    name = "diffusers UNet2DModel"

    def __init__(self, size: int, channels: int, lr: float) -> None:
        from diffusers import DDPMScheduler, UNet2DModel
        from diffusers.training_utils import EMAModel

        self.size, self.channels = size, channels
        self.model = UNet2DModel(
            sample_size=size,
            in_channels=channels,
            out_channels=channels,
            layers_per_block=1,
            block_out_channels=(32, 64, 128),
            down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
            norm_num_groups=8,
        )
        self.ema = EMAModel(self.model.parameters(), decay=0.999, use_ema_warmup=True)
        self.scheduler = DDPMScheduler(num_train_timesteps=1000)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr)

    def loss(self, x0: torch.Tensor, g: torch.Generator, amp: bool) -> torch.Tensor:
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (len(x0),), generator=g)
        x_t = self.scheduler.add_noise(x0, noise, t)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = self.model(x_t, t).sample
        return F.mse_loss(out.float(), noise)

    def after_step(self) -> None:
        self.ema.step(self.model.parameters())

    def finish(self) -> None:
        self.ema.copy_to(self.model.parameters())
        self.model.eval()

    @torch.no_grad()
    def sample(self, n: int, seed: int) -> torch.Tensor:
        from diffusers import DDIMScheduler

        scheduler = DDIMScheduler(num_train_timesteps=1000, clip_sample=True)
        scheduler.set_timesteps(50)
        g = torch.Generator().manual_seed(10_000 + seed)
        out = []
        for start in range(0, n, 250):
            x = torch.randn(min(250, n - start), self.channels, self.size, self.size, generator=g)
            for t in scheduler.timesteps:
                eps = self.model(x, t).sample
                x = scheduler.step(eps, t, x, eta=0.0).prev_sample
            out.append(to_uint8(x.clamp(-1, 1)))
        return torch.cat(out)


class LucidrainsPeer:
    """denoising_diffusion_pytorch's Unet + GaussianDiffusion (its defaults: sigmoid β, v
    prediction), Adam(0.9, 0.99), ema_pytorch's EMA(β 0.995, every 10 steps) as its Trainer."""

    name = "lucidrains denoising-diffusion-pytorch Unet"

    def __init__(self, size: int, channels: int, lr: float) -> None:
        from denoising_diffusion_pytorch import GaussianDiffusion, Unet
        from ema_pytorch import EMA

        net = Unet(dim=32, dim_mults=(1, 2, 4), channels=channels)
        self.model = GaussianDiffusion(net, image_size=size, timesteps=1000, sampling_timesteps=50)
        self.ema = EMA(self.model, beta=0.995, update_every=10)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr, betas=(0.9, 0.99))

    def loss(self, x0: torch.Tensor, g: torch.Generator, amp: bool) -> torch.Tensor:
        # its forward draws t and the noise from the global generator (seeded in train)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            return self.model((x0 + 1) / 2).float()  # it takes images in [0, 1]

    def after_step(self) -> None:
        self.ema.update()

    def finish(self) -> None:
        self.model = self.ema.ema_model.eval()

    @torch.no_grad()
    def sample(self, n: int, seed: int) -> torch.Tensor:
        torch.manual_seed(10_000 + seed)  # its sampler draws from the global generator
        out = [self.model.sample(batch_size=min(250, n - s)) for s in range(0, n, 250)]
        return to_uint8(torch.cat(out).clamp(0, 1) * 2 - 1)


PEERS = {"diffusers": DiffusersPeer, "lucidrains": LucidrainsPeer}


def train(args, images: torch.Tensor):
    """Train ``args.peer`` until ``args.minutes`` of step time: (peer, steps, seconds, median
    images/s)."""
    torch.manual_seed(args.seed)
    peer = PEERS[args.peer](args.size, images.shape[1], args.lr)
    g = torch.Generator().manual_seed(args.seed)
    spent, step, rates = 0.0, 0, []
    while spent < 60 * args.minutes:
        start = time.perf_counter()
        index = torch.randint(0, len(images), (args.batch,), generator=g)
        x0 = from_uint8(images[index])
        for group in peer.optimizer.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / 100)
        loss = peer.loss(x0, g, args.amp)
        peer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(peer.model.parameters(), 1.0)
        peer.optimizer.step()
        peer.after_step()
        step += 1
        took = time.perf_counter() - start
        spent += took
        rates.append(args.batch / took)
        if step % 200 == 0:
            print(f"step {step}: loss {loss.item():.4f}, {spent / 60:.1f} min", flush=True)
    peer.finish()
    return peer, step, spent, sorted(rates)[len(rates) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer", choices=sorted(PEERS), default="diffusers")
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
    peer, steps, spent, rate = train(args, images)
    started = time.perf_counter()
    samples = peer.sample(args.n, args.seed)
    sampling_s = time.perf_counter() - started
    name = default_features(data)
    extractor = load_extractor(name)
    reference = load_dataset(default_reference(data), progress=False).images_uint8
    real = extract_features(extractor, reference, progress=False)
    fake = extract_features(extractor, samples, progress=False)
    scores = score_sets(GaussianStats.of(real), GaussianStats.of(fake), real, fake, seed=args.seed)
    shares = class_shares(*predicted_classes(extractor.logits, samples))
    record = {
        "peer": peer.name,
        "torch": torch.__version__,
        "data": args.data,
        "seed": args.seed,
        "minutes": args.minutes,
        "steps": steps,
        "train_s": round(spent, 1),
        "images_per_s": round(rate, 1),
        "parameters": sum(p.numel() for p in peer.model.parameters()),
        "batch": args.batch,
        "lr": args.lr,
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
