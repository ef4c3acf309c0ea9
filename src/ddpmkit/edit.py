"""Editing with any trained run: inpainting (replacement and RePaint) and SDEdit.

- Replacement: the known pixels of x̂_0 are replaced by the given image at every step
  (:class:`KnownPixels`, a Denoiser wrapper, so every sampler can inpaint). Under ancestral
  sampling the known pixels of x_{t−1} are then drawn from the model's step with x̂_0 = x_0:
  with ``fixed_small`` (σ² = β̃_t) that is q(x_{t−1} | x_t, x_0), whose marginal is
  q(x_{t−1} | x_0), the classic replacement method; other variances (β_t, learned) draw them
  with their own variance instead. The unknown pixels see the known ones only
  through x_t, which biases them (measured in the tests against the exact conditional).
- RePaint (Lugmayr et al. 2022, Algorithm 1): ancestral steps whose known pixels are a fresh
  draw of q(x_{t−1} | x_0), with a resampling schedule that noises x_{t−1} back to x_t
  (q(x_t | x_{t−1}) = N(√(1−β_t) x_{t−1}, β_t I)) in jumps of ``jump`` steps, ``resample`` times
  per jump, so that the unknown pixels harmonise with the known ones.
- SDEdit (Meng et al. 2022): noise the input to t₀ = strength·T with q(x_{t₀} | x_0) and denoise
  from there with any sampler.

In every method the known pixels of the output equal the input exactly (pasted at the end).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ddpmkit.diffusion import GaussianDiffusion, Model, normal_like
from ddpmkit.errors import ConfigError
from ddpmkit.sampling import Sampler, integrate, make_grid, sample
from ddpmkit.sampling.denoiser import Denoiser, KnownPixels, as_denoiser, timesteps_like
from ddpmkit.sampling.grid import TimeGrid
from ddpmkit.sampling.repaint import PAPER_STEPS, repaint, repaint_levels
from ddpmkit.seeding import NoiseGenerator, per_sample_batches

INPAINT_METHODS = ("repaint", "replace")
REPAINT = Sampler("repaint", repaint, TimeGrid.spaced, PAPER_STEPS)

__all__ = [
    "INPAINT_METHODS",
    "KnownPixels",
    "inpaint",
    "in_batches",
    "read_images",
    "read_mask",
    "region_mask",
    "repaint_levels",
    "sdedit",
]


def _check_inputs(images: torch.Tensor, mask: torch.Tensor) -> None:
    if images.ndim != 4 or mask.shape[-2:] != images.shape[-2:]:
        raise ConfigError(
            f"the mask ({tuple(mask.shape)}) must have the images' height and width "
            f"({tuple(images.shape)})"
        )


def inpaint(
    model: Model | Denoiser,
    diffusion: GaussianDiffusion,
    images: torch.Tensor,
    mask: torch.Tensor,
    method: str = "repaint",
    sampler: str = "ddpm",
    steps: int | None = None,
    jump: int = 10,
    resample: int = 10,
    clip_x0: bool = True,
    generator: NoiseGenerator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Fill the pixels where ``mask`` is 0 (1 = known; broadcast over channels) of ``images``
    in [−1, 1]. ``replace`` works with every sampler; ``repaint`` is ancestral, on ``steps``
    respaced steps (default the paper's 250, or all T when T is smaller) with the resampling
    schedule of (``jump``, ``resample``)."""
    if method not in INPAINT_METHODS:
        raise ConfigError(f"unknown inpainting method '{method}': use repaint or replace")
    _check_inputs(images, mask)
    mask = mask.to(images.dtype).expand_as(images)
    denoiser = as_denoiser(model, diffusion)
    if method == "replace":
        out = sample(
            KnownPixels(denoiser, images, mask),
            diffusion,
            images.shape,
            sampler=sampler,
            steps=steps,
            clip_x0=clip_x0,
            generator=generator,
            device=images.device,
            dtype=images.dtype,
            progress=progress,
        )
    else:
        if sampler != "ddpm":
            raise ConfigError("RePaint is an ancestral method: use --sampler ddpm with it")
        grid = make_grid(REPAINT, diffusion.schedule, steps)
        out = integrate(
            denoiser,
            normal_like(images.shape, generator, images),
            REPAINT,
            grid,
            noise=generator,
            clip_x0=clip_x0,
            progress=progress,
            known=images,
            mask=mask,
            jump=jump,
            resample=resample,
        )
    return mask * images + (1 - mask) * out


def sdedit(
    model: Model | Denoiser,
    diffusion: GaussianDiffusion,
    images: torch.Tensor,
    strength: float,
    sampler: str = "ddpm",
    steps: int | None = None,
    eta: float = 0.0,
    clip_x0: bool = True,
    generator: NoiseGenerator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """SDEdit: x_{t₀} ~ q(x_{t₀} | x_0 = images) with t₀ = round(strength·T) − 1, then ``sampler``
    from t₀ to 0 (``steps`` spread over [0, t₀]). strength 1 ignores the input; small strengths
    keep more of it."""
    if not 0.0 < strength <= 1.0:
        raise ConfigError(f"--strength must lie in (0, 1], got {strength}")
    start = max(0, min(diffusion.num_steps - 1, round(strength * diffusion.num_steps) - 1))
    t = timesteps_like(start, images)
    x_start = diffusion.q_sample(images, t, normal_like(images.shape, generator, images))
    return sample(
        model,
        diffusion,
        images.shape,
        sampler=sampler,
        steps=None if steps is None else min(steps, start + 1),
        eta=eta,
        clip_x0=clip_x0,
        generator=generator,
        x_T=x_start,
        start_t=start,
        device=images.device,
        dtype=images.dtype,
        progress=progress,
    )


# ---------------------------------------------------------------------- inputs and batches
MASK_REGIONS = ("lower", "upper", "left", "right", "center")


def region_mask(region: str, size: int) -> torch.Tensor:
    """A (1, 1, size, size) mask with 1 on the known pixels, 0 on ``region`` (to fill):
    ``lower``/``upper``/``left``/``right`` half or the ``center`` square of half the side."""
    mask = torch.ones(1, 1, size, size)
    half, quarter = size // 2, size // 4
    if region == "lower":
        mask[..., half:, :] = 0
    elif region == "upper":
        mask[..., :half, :] = 0
    elif region == "left":
        mask[..., :, :half] = 0
    elif region == "right":
        mask[..., :, half:] = 0
    elif region == "center":
        mask[..., quarter : size - quarter, quarter : size - quarter] = 0
    else:
        raise ConfigError(f"unknown mask region '{region}': use a PNG or one of {MASK_REGIONS}")
    return mask


def read_mask(spec: str, size: int, invert: bool = False) -> torch.Tensor:
    """A mask from a region name or an image file; returns 1 = known, 0 = to fill.

    In an image file white (≥ 128) marks the pixels to fill and black the known ones (Stable
    Diffusion's and diffusers' inpainting pipelines). RePaint's own masks and diffusers'
    ``RePaintPipeline`` use the opposite, white = keep: read those with ``invert=True``."""

    from ddpmkit.data import load_image

    if spec in MASK_REGIONS:
        return region_mask(spec, size)
    if not Path(spec).is_file():
        raise ConfigError(
            f"unknown mask region '{spec}' and no such image file: give a mask PNG or one of "
            + ", ".join(MASK_REGIONS)
        )

    gray = load_image(spec, size, channels=1)  # [-1, 1]
    known = gray >= 0.0 if invert else gray < 0.0
    return known.to(torch.float32).unsqueeze(0)


def read_images(source: str, size: int, channels: int) -> torch.Tensor:
    """One image file or every image of a folder, as (N, C, size, size) in [−1, 1]."""

    from ddpmkit.data import DataConfig, from_uint8, load_dataset, load_image

    path = Path(source)
    if path.is_dir():
        config = DataConfig(source=str(path), image_size=size, channels=channels)
        return from_uint8(load_dataset(config, progress=False).images_uint8)
    return load_image(path, size, channels).unsqueeze(0)


def in_batches(
    edit_batch: Callable[[torch.Tensor, NoiseGenerator], torch.Tensor],
    images: torch.Tensor,
    seed: int,
    batch_size: int,
    device: torch.device,
    progress: bool = False,
) -> torch.Tensor:
    """Apply ``edit_batch(images, generator)`` in batches; image i draws its noise from its own
    generator seeded from (seed, i), so the result does not depend on the batch size."""
    outputs = []
    batches = per_sample_batches(0, len(images), batch_size, seed, device)
    for indices, generator in tqdm(batches, desc="editing", disable=not progress):
        batch = images[indices.start : indices.stop].to(device)
        outputs.append(edit_batch(batch, generator).cpu())
    return torch.cat(outputs)


@dataclass
class EditOutcome:
    """What :func:`edit_run` wrote."""

    written: list[Path]
    n: int
    seconds: float
    step: int | None
    conditioning: str


def edit_run(
    run_dir: str | Path,
    images: str,
    *,
    method: str = "sdedit",
    mask: str = "lower",
    invert_mask: bool = False,
    strength: float = 0.5,
    jump: int = 10,
    resample: int = 10,
    eta: float = 0.0,
    sampler: str = "ddpm",
    steps: int | None = None,
    classes: str | None = None,
    guidance: float = 0.0,
    clip_x0: bool = True,
    seed: int = 0,
    batch_size: int = 64,
    grid: str | Path | None = None,
    npz: str | Path | None = None,
    weights: str = "ema",
    device: str = "auto",
    step: int | None = None,
    progress: bool = True,
) -> EditOutcome:
    """``ddpm inpaint`` (``method`` repaint or replace) and ``ddpm edit`` (``method="sdedit"``)
    on one image or a folder: a grid of input/result pairs and an npz of the results."""
    import time

    from ddpmkit.generate import SampleResult, check_output_files, write_outputs
    from ddpmkit.run.conditioning import describe
    from ddpmkit.run.loaded import load_run
    from ddpmkit.rundir import RunDir
    from ddpmkit.sampling import get_sampler

    if batch_size < 1:
        raise ConfigError(f"--batch must be >= 1, got {batch_size}")
    get_sampler(sampler).check(eta=eta)
    run = load_run(run_dir, weights=weights, device=device, step=step)
    conditioning = run.conditioning(classes, guidance, "editing")
    if conditioning.classes is not None and len(conditioning.classes) != 1:
        raise ConfigError("--class takes one class for inpaint and edit")
    data = run.config.data
    inputs = read_images(images, data.image_size, data.channels)

    def denoiser(batch: torch.Tensor):
        """The run's denoiser for this batch: unconditional (the null class) or steered."""
        if conditioning.classes is None:
            return run.denoiser()
        labels = torch.full((len(batch),), conditioning.classes[0], dtype=torch.long)
        return run.denoiser(labels, guidance)

    if method == "sdedit":
        shown, name = inputs, f"edit-s{strength:g}-{sampler}-seed{seed}"

        def one_batch(batch, generator):
            return sdedit(
                denoiser(batch),
                run.diffusion,
                batch,
                strength,
                sampler,
                steps,
                eta,
                clip_x0,
                generator,
            )
    else:
        known = read_mask(mask, data.image_size, invert_mask)
        shown, name = known * inputs, f"inpaint-{method}-{sampler}-seed{seed}"  # fill: gray

        def one_batch(batch, generator):
            return inpaint(
                denoiser(batch),
                run.diffusion,
                batch,
                known.to(batch.device),
                method,
                sampler,
                steps,
                jump,
                resample,
                clip_x0,
                generator,
            )

    grid = Path(grid) if grid else RunDir(run_dir).sample_path(name)
    npz = Path(npz) if npz else grid.with_suffix(".npz")
    check_output_files([grid, npz])
    started = time.perf_counter()
    results = in_batches(one_batch, inputs, seed, batch_size, run.device, progress=progress)
    seconds = time.perf_counter() - started
    pairs = torch.stack([shown, results], dim=1).flatten(0, 1)  # input_0, result_0, …
    written = write_outputs(SampleResult(pairs, []), grid=grid, nrow=min(8, 2 * len(inputs)))
    written += write_outputs(SampleResult(results, []), npz=npz)
    shown_conditioning = describe(conditioning, run.num_classes, run.class_names)
    return EditOutcome(written, len(inputs), seconds, run.step, shown_conditioning)
