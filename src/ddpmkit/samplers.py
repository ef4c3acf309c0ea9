"""Samplers: turn noise into data with a trained model.

One entry point, :func:`sample`. Every sampler runs over a (possibly respaced) diffusion, calls
``callback`` after each step with the current x_t and the predicted x_0, and draws all its noise
from ``generator``, so the same seed gives the same images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ddpmkit.diffusion import (
    GaussianDiffusion,
    Model,
    normal_like,
    spaced_timesteps,
    wrap_respaced,
)
from ddpmkit.errors import ConfigError

SAMPLERS = ("ddpm", "ddim")


@dataclass
class SamplerStep:
    """What a callback sees after each step."""

    index: int  # 0-based step counter
    total: int  # number of steps
    t: int  # the original timestep the model was called at
    x: torch.Tensor  # x after this step (x_{t−1} in the paper's notation)
    pred_x0: torch.Tensor  # the model's estimate of x_0 at this step


Callback = Callable[[SamplerStep], None]


def _ddpm_step(
    diffusion: GaussianDiffusion,
    model: Model,
    x: torch.Tensor,
    i: int,
    clip_x0: bool,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x_{t−1} = μ_θ(x_t, t) + σ_t z, no noise at the last step (Ho et al., Algorithm 2)."""
    t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
    step = diffusion.p_mean_variance(model, x, t, clip_x0)
    if i == 0:
        return step.mean, step.x0
    noise = normal_like(x.shape, generator, x)
    return step.mean + torch.exp(0.5 * step.log_variance) * noise, step.x0


def _ddim_step(
    diffusion: GaussianDiffusion,
    model: Model,
    x: torch.Tensor,
    i: int,
    eta: float,
    clip_x0: bool,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DDIM (Song et al. 2021, eq. 12): x_{t'} = √ᾱ_{t'} x̂_0 + √(1−ᾱ_{t'}−σ²) ε̂ + σ z with
    σ = η √((1−ᾱ_{t'})/(1−ᾱ_t)) √(1−ᾱ_t/ᾱ_{t'}) (eq. 16); η = 0 is deterministic."""
    t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
    pred = diffusion.predict(model, x, t, clip_x0)
    alpha_bar = diffusion.coef("alphas_cumprod", t, x)
    alpha_bar_prev = diffusion.coef("alphas_cumprod_prev", t, x)
    sigma = (
        eta
        * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar))
        * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
    )
    direction = torch.sqrt((1 - alpha_bar_prev - sigma**2).clamp(min=0.0)) * pred.eps
    x_prev = torch.sqrt(alpha_bar_prev) * pred.x0 + direction
    if eta > 0 and i > 0:
        x_prev = x_prev + sigma * normal_like(x.shape, generator, x)
    return x_prev, pred.x0


def sample(
    model: Model,
    diffusion: GaussianDiffusion,
    shape: Sequence[int],
    sampler: str = "ddpm",
    steps: int | None = None,
    eta: float = 0.0,
    clip_x0: bool = True,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    x_T: torch.Tensor | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Draw ``shape[0]`` samples.

    ``sampler="ddpm"``: ancestral sampling (Ho et al., Algorithm 2) with the diffusion's variance,
    over all T steps or, with ``steps=K``, over K evenly spread steps of the respaced process
    (Nichol & Dhariwal 2021, §4). ``sampler="ddim"``: DDIM (Song et al. 2021) over ``steps``
    steps (default 50) with stochasticity ``eta`` (0 = deterministic, 1 ≈ ancestral).
    ``x_T`` overrides the initial noise. Returns x_0 in the data scale ([−1, 1] for images).
    """
    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler '{sampler}': choose one of {', '.join(SAMPLERS)}")
    if eta < 0:
        raise ConfigError(f"eta must be >= 0, got {eta}")
    if steps is None:
        steps = diffusion.num_steps if sampler == "ddpm" else min(50, diffusion.num_steps)
    timesteps = spaced_timesteps(diffusion.num_steps, steps)
    if len(timesteps) == diffusion.num_steps:
        spaced, run_model = diffusion, model
        timestep_map = torch.arange(diffusion.num_steps)
    else:
        spaced, timestep_map = diffusion.respaced(timesteps)
        run_model = wrap_respaced(model, timestep_map)

    if device is None:
        device = x_T.device if x_T is not None else torch.device("cpu")
    device = torch.device(device)
    if x_T is None:
        x = normal_like(shape, generator, torch.empty((), device=device, dtype=dtype))
    else:
        x = x_T.to(device=device, dtype=dtype)

    total = spaced.num_steps
    order = range(total - 1, -1, -1)
    with torch.no_grad():
        for counter, i in enumerate(
            tqdm(order, total=total, desc=f"{sampler} sampling", disable=not progress, leave=False)
        ):
            if sampler == "ddpm":
                x, pred_x0 = _ddpm_step(spaced, run_model, x, i, clip_x0, generator)
            else:
                x, pred_x0 = _ddim_step(spaced, run_model, x, i, eta, clip_x0, generator)
            if callback is not None:
                callback(SamplerStep(counter, total, int(timestep_map[i]), x, pred_x0))
    return x
