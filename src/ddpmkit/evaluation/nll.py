"""Negative log-likelihood of a trained run on a data set: the variational bound in bits/dim."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ddpmkit.data import DataConfig, from_uint8, load_dataset
from ddpmkit.errors import ConfigError
from ddpmkit.run.conditioning import describe
from ddpmkit.run.loaded import LoadedRun
from ddpmkit.rundir import RunDir
from ddpmkit.seeding import per_sample_batches
from ddpmkit.sharding import gather_shares, process_group, shard_range


@dataclass
class NLLReport:
    """Mean bits/dim over ``n`` images with a 95% interval (±1.96 standard errors) and the mean
    of each part of the bound (prior L_T, decoder L_0, Σ KL terms)."""

    bits_per_dim: float
    ci95: float
    prior: float
    decoder: float
    kl_sum: float
    n: int
    num_steps: int
    source: str
    step: int | None
    conditioning: str = "unconditional"  # a conditional run's bound is that of its null class

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    def summary(self) -> str:
        return (
            f"NLL {self.bits_per_dim:.4f} ± {self.ci95:.4f} bits/dim (95%, n={self.n}, "
            f"T={self.num_steps}): prior {self.prior:.4f} + decoder {self.decoder:.4f} + "
            f"KL terms {self.kl_sum:.4f}; {self.conditioning}"
        )


def evaluate_nll(
    run: LoadedRun,
    data: DataConfig | None = None,
    n: int = 1000,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
    distributed: bool = False,
) -> NLLReport:
    """The bound of ``n`` images drawn without replacement (seeded) from ``data`` (default: the
    run's own data), each term at a fresh q(x_t|x_0) sample. Image i (of the seeded order) draws
    its noise from its own generator, seeded from (``seed``, i), so its bound does not depend on
    the batch size. ``distributed``: every process of the process group calls this; each bounds
    its share of whole batches (:func:`~ddpmkit.sharding.shard_range`) and all get the report
    one process computes alone."""
    if n < 1 or batch_size < 1:
        raise ConfigError("--n and --batch must be >= 1")
    conditioning = run.conditioning(None, what="the bound")  # the unconditional model
    denoiser = run.denoiser()
    data = data or run.config.data
    if data.channels != run.config.data.channels or data.image_size != run.config.data.image_size:
        raise ConfigError(
            f"the data must be {run.config.data.image_size}x{run.config.data.image_size} with "
            f"{run.config.data.channels} channel(s), as the model was trained"
        )
    dataset = load_dataset(data, progress=progress, distributed=distributed)
    images = dataset.images_uint8
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    count = min(n, len(images))
    group = process_group() if distributed else None
    first, last = shard_range(count, batch_size, *group) if group else (0, count)
    terms = []  # per image: total, prior, decoder, KL sum
    bar = tqdm(total=last - first, desc="NLL", unit="img", disable=not progress)
    for indices, generator in per_sample_batches(first, last, batch_size, seed, run.device):
        x0 = from_uint8(images[order[indices.start : indices.stop]]).to(run.device)
        bound = run.diffusion.nll(denoiser, x0, generator=generator, progress=progress)
        parts = (bound.total, bound.prior, bound.decoder, bound.kl_sum)
        terms.append(torch.stack([p.double().cpu() for p in parts], dim=1))
        bar.update(len(indices))
    bar.close()
    mine = torch.cat(terms) if terms else torch.zeros(0, 4, dtype=torch.float64)
    per_image = torch.cat(gather_shares(mine)) if group else mine
    total = per_image[:, 0]
    std = total.std().item() if len(total) > 1 else float("nan")
    prior, decoder, kl_sum = per_image[:, 1:].mean(dim=0).tolist()
    return NLLReport(
        bits_per_dim=total.mean().item(),
        ci95=1.96 * std / math.sqrt(len(total)),
        prior=prior,
        decoder=decoder,
        kl_sum=kl_sum,
        n=len(total),
        num_steps=run.diffusion.num_steps,
        source=data.source,
        step=run.step,
        conditioning=describe(conditioning, run.num_classes),
    )


def write_report(report: NLLReport, path: str | Path) -> Path:
    """``report`` as JSON at ``path``, written atomically."""
    from ddpmkit.fileio import atomic_write_text

    path = Path(path)
    atomic_write_text(path, report.to_json())
    return path


def run_nll(
    run_dir: str | Path,
    *,
    data: str | None = None,
    n: int = 1000,
    batch_size: int = 64,
    seed: int = 0,
    out: str | Path | None = None,
    weights: str = "ema",
    device: str = "auto",
    step: int | None = None,
    progress: bool = True,
) -> tuple[NLLReport, Path | None]:
    """``ddpm nll``: the bound of ``n`` images of the run's data (or ``data``), written to
    ``out`` (default ``RUN_DIR/nll.json``). Under ``torchrun`` the processes split the images
    and process 0 writes; the others return the report and no path."""

    from ddpmkit.run.loaded import load_run
    from ddpmkit.sharding import torchrun_processes

    with torchrun_processes(device) as (distributed, rank, device):
        run = load_run(run_dir, weights=weights, device=device, step=step)
        source = run.config.data if data is None else run.config.data.read_as_written(data)
        shown = progress and rank == 0
        report = evaluate_nll(run, source, n, batch_size, seed, shown, distributed)
    if rank != 0:
        return report, None
    return report, write_report(report, out or RunDir(run_dir).nll_path)
