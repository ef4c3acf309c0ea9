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
from ddpmkit.generate import LoadedRun
from ddpmkit.rundir import RunDir


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

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    def summary(self) -> str:
        return (
            f"NLL {self.bits_per_dim:.4f} ± {self.ci95:.4f} bits/dim (95%, n={self.n}, "
            f"T={self.num_steps}): prior {self.prior:.4f} + decoder {self.decoder:.4f} + "
            f"KL terms {self.kl_sum:.4f}"
        )


def evaluate_nll(
    run: LoadedRun,
    data: DataConfig | None = None,
    n: int = 1000,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> NLLReport:
    """The bound of ``n`` images drawn without replacement (seeded) from ``data`` (default: the
    run's own data), each term at a fresh q(x_t|x_0) sample."""
    if n < 1 or batch_size < 1:
        raise ConfigError("--n and --batch must be >= 1")
    data = data or run.config.data
    if data.channels != run.config.data.channels or data.image_size != run.config.data.image_size:
        raise ConfigError(
            f"the data must be {run.config.data.image_size}x{run.config.data.image_size} with "
            f"{run.config.data.channels} channel(s), as the model was trained"
        )
    dataset = load_dataset(data, progress=progress)
    images = dataset.images_uint8
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    chosen = images[order[: min(n, len(images))]]
    generator = torch.Generator(device=run.device).manual_seed(seed)
    totals, priors, decoders, kls = [], [], [], []
    bar = tqdm(total=len(chosen), desc="NLL", unit="img", disable=not progress)
    for start in range(0, len(chosen), batch_size):
        x0 = from_uint8(chosen[start : start + batch_size]).to(run.device)
        bound = run.diffusion.nll(run.model, x0, generator=generator, progress=progress)
        totals.append(bound.total.cpu())
        priors.append(bound.prior.cpu())
        decoders.append(bound.decoder.cpu())
        kls.append(bound.kl_sum.cpu())
        bar.update(len(x0))
    bar.close()
    total = torch.cat(totals)
    std = total.std().item() if len(total) > 1 else float("nan")
    return NLLReport(
        bits_per_dim=total.mean().item(),
        ci95=1.96 * std / math.sqrt(len(total)),
        prior=torch.cat(priors).mean().item(),
        decoder=torch.cat(decoders).mean().item(),
        kl_sum=torch.cat(kls).mean().item(),
        n=len(total),
        num_steps=run.diffusion.num_steps,
        source=data.source,
        step=run.step,
    )


def write_report(report: NLLReport, path: str | Path) -> Path:
    path = Path(path)
    return RunDir(path.parent).write_text(path.name, report.to_json())
