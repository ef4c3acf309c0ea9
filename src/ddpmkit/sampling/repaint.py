"""RePaint (Lugmayr et al. 2022, Algorithm 1): ancestral inpainting with resampling.

Ancestral steps over a time grid whose known pixels are a fresh draw of q(x_{t'} | x_0), and a
resampling schedule that noises x_{t'} back to x_t (q(x_t | x_{t'}) on the grid's process) in
jumps of ``jump`` steps, ``resample`` times per jump, so that the unknown pixels harmonise with
the known ones. The paper uses 250 respaced steps with jump 10 × resample 10.
"""

from __future__ import annotations

import torch

from ddpmkit.diffusion import check_learned_variance_respacing, normal_like
from ddpmkit.errors import ConfigError
from ddpmkit.sampling.ancestral import ancestral_step
from ddpmkit.sampling.denoiser import Denoiser, timesteps_like
from ddpmkit.sampling.grid import TimeGrid
from ddpmkit.sampling.step import Callback, SamplerStep
from ddpmkit.seeding import NoiseGenerator

PAPER_STEPS = 250  # Lugmayr et al.'s respaced grid (with jump 10, resample 10)


def repaint_levels(count: int, jump: int, resample: int) -> list[int]:
    """The RePaint visiting order of the levels of a ``count``-step process: level ℓ holds
    x_ℓ (−1 is x_0). Going down one level is an ancestral step; after reaching a level that is a
    multiple of ``jump`` (below the top jump) the walk goes back up ``jump`` levels, ``resample``
    − 1 times for each such level, then continues down."""
    if jump < 1 or resample < 1:
        raise ConfigError("--jump and --resample must be >= 1")
    left = {level: resample - 1 for level in range(0, count - jump, jump)}
    level, levels = count - 1, [count - 1]
    while level >= 0:
        level -= 1
        levels.append(level)
        if left.get(level, 0) > 0:
            left[level] -= 1
            for _ in range(jump):
                level += 1
                levels.append(level)
    return levels


def repaint_calls(count: int, jump: int, resample: int) -> int:
    """Network calls of RePaint on a ``count``-step grid: one per downward move."""
    levels = repaint_levels(count, jump, resample)
    return sum(b < a for a, b in zip(levels, levels[1:], strict=False))


def repaint(
    denoiser: Denoiser,
    x: torch.Tensor,
    grid: TimeGrid,
    *,
    known: torch.Tensor,
    mask: torch.Tensor,
    jump: int = 10,
    resample: int = 10,
    noise: NoiseGenerator | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Fill the pixels where ``mask`` is 0 (1 = known, shaped like x) of ``known`` in [−1, 1],
    from x at the grid's last timestep."""
    variance = denoiser.diffusion.variance
    check_learned_variance_respacing(variance, len(grid), grid.base.num_steps)
    alpha_bar = grid.process.alphas_cumprod
    levels = repaint_levels(len(grid), jump, resample)
    moves = list(zip(levels, levels[1:], strict=False))
    total, counter = sum(there < here for here, there in moves), 0
    for here, there in moves:
        if there > here:  # back up one level: q(x_{ℓ+1} | x_ℓ)
            ratio = float(alpha_bar[there] / (alpha_bar[here] if here >= 0 else 1.0))
            x = ratio**0.5 * x + (1 - ratio) ** 0.5 * normal_like(x.shape, noise, x)
            continue
        t = grid.timesteps[here]
        pred = denoiser(x, timesteps_like(t, x))
        unknown = ancestral_step(grid, variance, pred, x, here, noise)  # no noise at level 0
        known_now = known
        if there >= 0:  # a fresh draw of q(x_there | x_0)
            a = float(alpha_bar[there])
            known_now = a**0.5 * known + (1 - a) ** 0.5 * normal_like(x.shape, noise, x)
        x = mask * known_now + (1 - mask) * unknown
        if callback is not None:
            callback(SamplerStep(counter, total, t, x, pred.x0))
            counter += 1
    return x
