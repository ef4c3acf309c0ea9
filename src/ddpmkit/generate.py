"""From a trained network to images: sample in batches (image i's noise from (seed, i)), write
grid / GIF / npz. ``load_run`` and ``resolve_device`` live in :mod:`ddpmkit.run.loaded` (re-exported
here)."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ddpmkit.diffusion import GaussianDiffusion
from ddpmkit.errors import ConfigError
from ddpmkit.fileio import atomic_write_bytes
from ddpmkit.precision import with_autocast
from ddpmkit.run.loaded import (
    GUIDANCE_CPU_MAX_BATCH,
    LoadedRun,
    guidance_max_batch,
    load_run,
    resolve_device,
)
from ddpmkit.rundir import RunDir
from ddpmkit.sampling import Sampler, SamplerStep, get_sampler, initial_noise, integrate, make_grid
from ddpmkit.sampling.denoiser import ModelDenoiser
from ddpmkit.seeding import per_sample_batches

__all__ = [
    "GUIDANCE_CPU_MAX_BATCH",
    "LoadedRun",
    "SampleRequest",
    "SampleResult",
    "generate",
    "load_run",
    "resolve_device",
    "sample_run",
    "write_outputs",
]
from ddpmkit.viz import save_gif, save_grid, to_uint8


@dataclass
class SampleRequest:
    """What to sample; image i's noise depends only on (``seed``, i), not on ``n`` or
    ``batch_size``."""

    n: int = 64
    sampler: str | Sampler = "ddpm"  # a name of ddpmkit.sampling.SAMPLERS, or any Sampler
    steps: int | None = None
    eta: float = 0.0
    churn: float = 0.0  # heun's S_churn (Karras et al. 2022, Algorithm 2); 0: deterministic
    clip_x0: bool = True
    seed: int = 0  # >= 0
    batch_size: int = 256
    gif_frames: int = 0  # > 0: record this many evenly spaced frames of the first batch
    labels: Sequence[int] | None = None  # class of each image (class-conditional runs)
    guidance: float = 0.0  # classifier-free guidance weight w (ddpmkit.denoiser.guide)
    null_label: int | None = None  # the run's "no class" label (its number of classes)
    amp: bool = False  # the network under bfloat16 autocast (the sampler's arithmetic stays fp32)


@dataclass
class SampleResult:
    images: torch.Tensor  # (n, C, H, W) in [-1, 1], on the CPU
    frames: list[torch.Tensor]  # x_t of the first batch at evenly spaced steps (+ the final x_0)
    labels: torch.Tensor | None = None  # (n,) int64 for class-conditional samples


def generate(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    diffusion: GaussianDiffusion,
    image_shape: tuple[int, int, int],
    request: SampleRequest,
    device: torch.device | str,
    progress: bool = True,
    distributed: bool = False,
) -> SampleResult:
    """Draw ``request.n`` images in batches of ``request.batch_size``. Image i draws all its noise
    from its own generator, seeded from (``request.seed``, i) by
    :func:`~ddpmkit.seeding.sample_seed`, so image i is the same whatever the batch size and the
    number of images asked for (on the same device and torch version), and two seeds draw
    unrelated noise (eval replicates are independent). The GIF frames follow the first batch.

    ``distributed``: every process of the initialised process group calls this; process r draws
    the r-th contiguous block of the images and all of them receive all images in order — the
    same images as one process draws (on the same device kind)."""
    device = torch.device(device)
    if request.n < 1 or request.batch_size < 1:
        raise ConfigError("the number of samples and the batch size must be >= 1")
    if request.seed < 0:
        raise ConfigError(f"the seed must be >= 0, got {request.seed}")
    # check the request before any work or progress bar
    sampler = get_sampler(request.sampler)
    options = {"eta": request.eta, "churn": request.churn}
    sampler.check(**options)
    grid = make_grid(sampler, diffusion.schedule, request.steps)
    options = {name: value for name, value in options.items() if value}
    labels = None
    if request.labels is not None:
        labels = torch.as_tensor(list(request.labels), dtype=torch.long)
        if labels.shape != (request.n,) or request.null_label is None:
            raise ConfigError("class-conditional sampling needs one label per image")
    elif request.guidance:
        raise ConfigError("guidance needs class labels (a class-conditional run and --class)")
    if request.amp:
        model = with_autocast(model, device)
    denoiser = ModelDenoiser(
        model,
        diffusion,
        null_label=request.null_label,
        guidance=request.guidance,
        max_batch=guidance_max_batch(device),
    )
    images, frames = [], []
    first, last = 0, request.n
    if distributed:
        rank, world = dist.get_rank(), dist.get_world_size()
        first, last = request.n * rank // world, request.n * (rank + 1) // world
    bar = tqdm(total=last - first, desc="sampling", unit="img", disable=not progress)
    batches = per_sample_batches(first, last, request.batch_size, request.seed, device)
    for k, (indices, generator) in enumerate(batches):
        callback = None
        if k == 0 and request.gif_frames > 0:

            def callback(step: SamplerStep) -> None:
                every = max(1, step.total // request.gif_frames)
                if (step.total - 1 - step.index) % every == 0 and step.index < step.total - 1:
                    frames.append(step.x.detach().cpu())

        rows = None if labels is None else labels[indices.start : indices.stop]
        batch = integrate(
            denoiser.at(rows),
            initial_noise((len(indices), *image_shape), generator, device),
            sampler,
            grid,
            noise=generator,
            callback=callback,
            clip_x0=request.clip_x0,
            progress=progress and request.n <= request.batch_size,
            **options,
        )
        images.append(batch.cpu())
        bar.update(len(indices))
    bar.close()
    result = torch.cat(images) if images else torch.empty(0, *image_shape)
    if distributed:
        blocks: list[torch.Tensor | None] = [None] * dist.get_world_size()
        dist.all_gather_object(blocks, result)
        result = torch.cat(blocks)
    if request.gif_frames > 0:
        frames.append(result[: request.batch_size])
    return SampleResult(result, frames, labels)


def write_outputs(
    result: SampleResult,
    grid: Path | None = None,
    gif: Path | None = None,
    npz: Path | None = None,
    nrow: int | None = None,
) -> list[Path]:
    """Write the grid PNG, the denoising GIF and the npz that are asked for: uint8 NHWC images
    under ``arr_0`` and, for class-conditional samples, their labels under ``arr_1`` (the layout
    of OpenAI's evaluation suite)."""
    written = []
    if grid is not None:
        written.append(save_grid(result.images, grid, nrow))
    if gif is not None:
        written.append(save_gif(result.frames, gif, nrow))
    if npz is not None:
        array = to_uint8(result.images).permute(0, 2, 3, 1).numpy()
        buffer = io.BytesIO()
        arrays = {"arr_0": array}
        if result.labels is not None:
            arrays["arr_1"] = result.labels.numpy()
        np.savez(buffer, **arrays)
        atomic_write_bytes(Path(npz), buffer.getvalue())
        written.append(Path(npz))
    return written


@dataclass
class RunSamples:
    """What :func:`sample_run` did: the files written, how many images, how long, from which
    checkpoint, conditioned on what."""

    written: list[Path]
    n: int
    seconds: float
    step: int | None
    conditioning: str


def sample_run(
    run_dir: str | Path,
    *,
    n: int | None = None,
    classes: str | None = None,
    guidance: float = 0.0,
    sampler: str = "ddpm",
    steps: int | None = None,
    eta: float = 0.0,
    churn: float = 0.0,
    clip_x0: bool = True,
    seed: int = 0,
    batch_size: int = 256,
    amp: bool = False,
    grid: str | Path | None = None,
    gif: str | Path | None = None,
    npz: str | Path | None = None,
    weights: str = "ema",
    device: str = "auto",
    step: int | None = None,
    progress: bool = True,
) -> RunSamples:
    """``ddpm sample``: draw from a run's weights and write a grid (default
    ``samples/sample-SAMPLERSTEPS-seedS.png``), optionally a denoising GIF and an npz. With
    ``classes`` (``--class``: indices, names, ``all``) ``n`` is per class (default 8 for several
    classes, else 64) and the grid has a row per class; every output says its conditioning."""
    import time

    from ddpmkit.run.conditioning import describe

    if batch_size < 1:
        raise ConfigError(f"--batch must be >= 1, got {batch_size}")
    run = load_run(run_dir, weights=weights, device=device, step=step)
    conditioning = run.conditioning(classes, guidance)
    chosen = conditioning.classes
    per_class = n if n is not None else (8 if chosen and len(chosen) > 1 else 64)
    if per_class < 1:
        raise ConfigError(f"--n must be >= 1, got {per_class}")
    labels = [k for k in chosen for _ in range(per_class)] if chosen else None
    request = SampleRequest(
        n=len(labels) if labels else per_class,
        sampler=sampler,
        steps=steps,
        eta=eta,
        churn=churn,
        clip_x0=clip_x0,
        seed=seed,
        batch_size=batch_size,
        gif_frames=50 if gif else 0,
        labels=labels,
        guidance=guidance,
        null_label=run.num_classes if run.num_classes else None,
        amp=amp,
    )
    if grid is None:
        name = f"sample-{sampler}{steps if steps is not None else 'all'}-seed{seed}"
        grid = RunDir(run_dir).sample_path(name)
    outputs = [Path(p) if p is not None else None for p in (grid, gif, npz)]
    check_output_files(outputs)
    data = run.config.data
    started = time.perf_counter()
    result = generate(
        run.model,
        run.diffusion,
        (data.channels, data.image_size, data.image_size),
        request,
        run.device,
        progress=progress,
    )
    seconds = time.perf_counter() - started
    nrow = per_class if chosen and len(chosen) > 1 else None
    written = write_outputs(result, *outputs, nrow=nrow)
    shown = describe(conditioning, run.num_classes, run.class_names)
    return RunSamples(written, request.n, seconds, run.step, shown)


def check_output_files(paths: Sequence[Path | None]) -> None:
    """Fail before any work when an output path is a folder; create missing parent folders."""
    for path in paths:
        if path is None:
            continue
        if path.is_dir():
            raise ConfigError(f"'{path}' is a folder: give a file name")
        path.parent.mkdir(parents=True, exist_ok=True)
