"""The random draws of a training micro-batch, the same whatever the number of processes.

Algorithm 1 of Ho et al. (2020) draws, per image, t ~ Uniform{1..T} and ε ~ N(0, I); ddpmkit
also draws a horizontal flip and, for a class-conditional run, whether the label is dropped.
Each draw is keyed by (seed, attempt, row of the global batch) alone (:func:`draw_seed`; an
attempt is a step, skipped non-finite steps included; the global batch is the ``batch_size``
images of all processes and all micro-batches), and a process draws the rows its images occupy
in the global batch (:func:`global_rows`; :func:`ddpmkit.data.loader.epoch_share` splits each
epoch by position the same way). So N processes with the same global batch train like one
process, whatever ``grad_accum``, up to the order of floating-point sums (exactly so while the
data count is a multiple of N; otherwise the processes cross epoch boundaries at different
steps), and a resumed run draws what it would have drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ddpmkit.seeding import PerSampleGenerator
from ddpmkit.timesteps import UniformSampler, uniform_timesteps


def draw_seed(seed: int, attempt: int, row: int | None = None) -> int:
    """The 63-bit seed of attempt ``attempt``: of the t, flips and dropped labels of its whole
    global batch (``row=None``), or of the noise ε of its image ``row``."""
    key = (1, attempt) if row is None else (2, attempt, row)
    sequence = np.random.SeedSequence(entropy=seed, spawn_key=key)
    return int(sequence.generate_state(1, np.uint64)[0]) >> 1


def global_rows(micro: int, grad_accum: int, batch_size: int, rank: int, world: int) -> range:
    """The rows of the global batch that process ``rank`` trains on in micro-batch ``micro``:
    micro-batch k holds rows [k·G, (k+1)·G), G = batch_size / grad_accum, and the process every
    ``world``-th of them, from ``rank`` on."""
    size = batch_size // grad_accum
    return range(micro * size + rank, (micro + 1) * size, world)


@dataclass
class BatchDraws:
    """This process's rows of one micro-batch's draws."""

    t: torch.Tensor  # (m,) int64 on the device
    weights: torch.Tensor | None  # (m,) importance weights 1/(T p_t), or None (uniform t)
    noise: torch.Tensor  # (m, C, H, W) float32 on the device
    flip: torch.Tensor  # (m,) bool on the CPU
    drop_label: torch.Tensor  # (m,) bool on the CPU


def draw_batch(
    *,
    seed: int,
    attempt: int,
    rows: range,
    batch_size: int,
    image_shape: tuple[int, int, int],
    num_steps: int,
    device: torch.device,
    timestep_sampler: UniformSampler | None = None,
    label_dropout: float = 0.0,
) -> BatchDraws:
    """Draw t (uniformly, or from ``timestep_sampler``, whose state all processes share),
    flips and dropped labels for the ``batch_size`` images of the global batch on the CPU (a
    few numbers per image) and keep ``rows`` (:func:`global_rows`); draw ε for those rows
    only, each from its own generator on the device (no process draws the noise of the whole
    global batch)."""
    index = torch.tensor(list(rows), dtype=torch.long)
    cpu = torch.Generator().manual_seed(draw_seed(seed, attempt))
    if timestep_sampler is None:
        t = uniform_timesteps(num_steps, batch_size, cpu)
        weights = None
    else:
        t, weights = timestep_sampler.sample(batch_size, torch.device("cpu"), cpu)
        weights = weights[index].to(device)
    flip = torch.rand(batch_size, generator=cpu) < 0.5
    drop = torch.rand(batch_size, generator=cpu) < label_dropout
    noise = PerSampleGenerator([draw_seed(seed, attempt, q) for q in rows], device)
    return BatchDraws(
        t[index].to(device),
        weights,
        noise.randn((len(rows), *image_shape)),
        flip[index],
        drop[index],
    )
