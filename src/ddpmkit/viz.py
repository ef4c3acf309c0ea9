"""Pictures: image grids and denoising GIFs (Pillow only)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ddpmkit.data import to_uint8
from ddpmkit.fileio import atomic_write_bytes


def grid_array(
    images: torch.Tensor, nrow: int | None = None, padding: int = 2, min_width: int = 512
) -> np.ndarray:
    """Tile a (B, C, H, W) batch in [-1, 1] into one uint8 array (H', W', C) with white padding.

    Small images are enlarged by an integer factor (nearest neighbour) until the grid is at least
    ``min_width`` pixels wide, so a grid of 16×16 digits is readable."""
    b, c, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(b)))
    ncol_rows = math.ceil(b / nrow)
    scale = max(1, math.ceil(min_width / (nrow * (w + padding))))
    pixels = to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()
    if scale > 1:
        pixels = pixels.repeat(scale, axis=1).repeat(scale, axis=2)
    h, w = h * scale, w * scale
    grid = np.full(
        (ncol_rows * (h + padding) + padding, nrow * (w + padding) + padding, c), 255, np.uint8
    )
    for i in range(b):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[top : top + h, left : left + w] = pixels[i]
    return grid


def _pil(array: np.ndarray) -> Image.Image:
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Write a PNG grid of a (B, C, H, W) batch in [-1, 1]; returns the path."""
    path = Path(path)
    buffer = io.BytesIO()
    _pil(grid_array(images, nrow)).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def save_gif(
    frames: Sequence[torch.Tensor],
    path: str | Path,
    nrow: int | None = None,
    frame_ms: int = 60,
    hold_last_ms: int = 1500,
) -> Path:
    """An animated GIF of grids, one per frame (each a (B, C, H, W) batch in [-1, 1]); the last
    frame stays on screen for ``hold_last_ms``."""
    if not frames:
        raise ValueError("save_gif needs at least one frame")
    path = Path(path)
    pictures = [_pil(grid_array(f, nrow)).convert("P" if f.shape[1] == 3 else "L") for f in frames]
    durations = [frame_ms] * (len(pictures) - 1) + [hold_last_ms]
    buffer = io.BytesIO()
    pictures[0].save(
        buffer,
        format="GIF",
        save_all=True,
        append_images=pictures[1:],
        duration=durations,
        loop=0,
        optimize=False,
    )
    atomic_write_bytes(path, buffer.getvalue())
    return path


def forward_process_rows(
    x0: torch.Tensor, schedules: Sequence[str], num_steps: int, columns: int, seed: int = 0
) -> tuple[torch.Tensor, list[int]]:
    """``ddpm forward``: the image ``x0`` (C, H, W) noised by q(x_t | x_0) at ``columns`` evenly
    spaced t, one row per schedule, the same noise in every row; returns the rows stacked and
    the timesteps."""
    from ddpmkit.diffusion import GaussianDiffusion, spaced_timesteps
    from ddpmkit.schedules import make_schedule

    x0 = x0.unsqueeze(0)
    timesteps = spaced_timesteps(num_steps, min(columns, num_steps))
    rows = []
    for name in schedules:
        diffusion = GaussianDiffusion(make_schedule(name, num_steps))
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn(x0.shape, generator=gen).expand(len(timesteps), *x0.shape[1:])
        rows.append(diffusion.q_sample(x0.expand_as(noise), torch.tensor(timesteps), noise))
    return torch.cat(rows), timesteps
