"""Samplers: turn noise into data with a trained model.

One entry point, :func:`sample`. Every sampler runs over a (possibly respaced) diffusion, calls
``callback`` after each step with the current x_t and the predicted x_0, and draws all its noise
from ``generator``, so the same seed gives the same images. With a
:class:`~ddpmkit.seeding.PerSampleGenerator` every noise tensor is drawn row by row, each sample
from its own stream, so a sample's noise does not depend on the rest of its batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ddpmkit.denoiser import (
    Denoiser,
    Prediction,
    as_denoiser,
    clip_prediction,
    timesteps_like,
)
from ddpmkit.diffusion import (
    GaussianDiffusion,
    Model,
    check_learned_variance_respacing,
    normal_like,
    spaced_timesteps,
)
from ddpmkit.errors import ConfigError
from ddpmkit.seeding import NoiseGenerator
from ddpmkit.solvers import dpm_solver_pp_2m, heun

SAMPLERS = ("ddpm", "ddim", "dpm++", "heun")
DEFAULT_STEPS = {"ddim": 50, "dpm++": 20, "heun": 18}  # ddpm: all T steps


def default_steps(sampler: str, num_steps: int) -> int:
    """The number of steps a sampler takes when none is asked for (capped at T)."""
    return min(DEFAULT_STEPS.get(sampler, num_steps), num_steps)


def function_evaluations(sampler: str, steps: int) -> int:
    """Network calls (NFE) of ``steps`` steps: one per step, but Heun's 2nd-order correction costs
    a second call on every step except the last (which ends at σ = 0)."""
    return 2 * steps - 1 if sampler == "heun" else steps


def check_sampler(sampler: str, eta: float = 0.0) -> None:
    """Raise :class:`ConfigError` for an unknown sampler or an ``eta`` it cannot use."""
    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler '{sampler}': choose one of {', '.join(SAMPLERS)}")
    if eta < 0:
        raise ConfigError(f"eta must be >= 0, got {eta}")
    if eta > 0 and sampler in ("dpm++", "heun"):
        raise ConfigError(f"eta applies to ddim only; {sampler} solves the deterministic ODE")


@dataclass
class SamplerStep:
    """What a callback sees after each step."""

    index: int  # 0-based step counter
    total: int  # number of steps
    t: int  # the original timestep the model was called at
    x: torch.Tensor  # x after this step (x_{t−1} in the paper's notation)
    pred_x0: torch.Tensor  # the model's estimate of x_0 at this step


Callback = Callable[[SamplerStep], None]


def spaced_process(diffusion: GaussianDiffusion, steps: int) -> tuple[list[int], GaussianDiffusion]:
    """The ``steps`` original timesteps a sampler visits (evenly spread over [0, T−1]) and the
    process over them: ``diffusion`` itself for all T steps, else its respaced version."""
    timesteps = spaced_timesteps(diffusion.num_steps, steps)
    if len(timesteps) == diffusion.num_steps:
        return timesteps, diffusion
    return timesteps, diffusion.respaced(timesteps)[0]


def predict(
    denoiser: Denoiser, diffusion: GaussianDiffusion, x: torch.Tensor, t: int, clip_x0: bool
) -> Prediction:
    """The denoiser at the original timestep ``t``, x̂_0 clipped if asked."""
    timesteps = timesteps_like(t, x)
    pred = denoiser(x, timesteps)
    return clip_prediction(diffusion, pred, x, timesteps) if clip_x0 else pred


def ancestral_step(
    spaced: GaussianDiffusion,
    pred: Prediction,
    x: torch.Tensor,
    i: int,
    generator: NoiseGenerator | None,
) -> torch.Tensor:
    """x_{t−1} = μ̃(x_t, x̂_0) + σ_t z, no noise at the last step (Ho et al., Algorithm 2, with the
    posterior mean of eq. 7 and the variance of :meth:`GaussianDiffusion.log_variance`)."""
    index = timesteps_like(i, x)
    mean, _, _ = spaced.q_posterior(pred.x0, x, index)
    if i == 0:
        return mean
    log_variance = spaced.log_variance(index, x, pred.variance)
    return mean + torch.exp(0.5 * log_variance) * normal_like(x.shape, generator, x)


def _ddim_step(
    spaced: GaussianDiffusion,
    pred: Prediction,
    x: torch.Tensor,
    i: int,
    eta: float,
    generator: NoiseGenerator | None,
) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12): x_{t'} = √ᾱ_{t'} x̂_0 + √(1−ᾱ_{t'}−σ²) ε̂ + σ z with
    σ = η √((1−ᾱ_{t'})/(1−ᾱ_t)) √(1−ᾱ_t/ᾱ_{t'}) (eq. 16); η = 0 is deterministic."""
    index = timesteps_like(i, x)
    alpha_bar = spaced.coef("alphas_cumprod", index, x)
    alpha_bar_prev = spaced.coef("alphas_cumprod_prev", index, x)
    sigma = (
        eta
        * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar))
        * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
    )
    direction = torch.sqrt((1 - alpha_bar_prev - sigma**2).clamp(min=0.0)) * pred.eps
    x_prev = torch.sqrt(alpha_bar_prev) * pred.x0 + direction
    if eta > 0 and i > 0:
        x_prev = x_prev + sigma * normal_like(x.shape, generator, x)
    return x_prev


def sample(
    model: Model | Denoiser,
    diffusion: GaussianDiffusion,
    shape: Sequence[int],
    sampler: str = "ddpm",
    steps: int | None = None,
    eta: float = 0.0,
    clip_x0: bool = True,
    generator: NoiseGenerator | None = None,
    callback: Callback | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    x_T: torch.Tensor | None = None,
    progress: bool = False,
    start_t: int | None = None,
) -> torch.Tensor:
    """Draw ``shape[0]`` samples.

    ``sampler="ddpm"``: ancestral sampling (Ho et al., Algorithm 2) with the diffusion's variance,
    over all T steps or, with ``steps=K``, over K evenly spread steps of the respaced process
    (Nichol & Dhariwal 2021, §4). ``sampler="ddim"``: DDIM (Song et al. 2021) over ``steps``
    steps (default 50) with stochasticity ``eta`` (0 = deterministic, 1 ≈ ancestral).
    ``sampler="dpm++"``: DPM-Solver++(2M) (Lu et al. 2022) in ``steps`` network calls (default 20);
    ``sampler="heun"``: Heun's method on Karras et al.'s σ schedule, ``steps`` steps (default 18)
    costing 2·steps − 1 calls (see :mod:`ddpmkit.solvers`).
    ``generator``: a :class:`torch.Generator`, or a :class:`~ddpmkit.seeding.PerSampleGenerator`
    for one noise stream per sample. ``x_T`` overrides the initial noise. ``start_t``: start
    from x_{start_t} (given as ``x_T``) instead of x_T — the process truncated there, with
    ``steps`` spread over [0, start_t] (SDEdit). Returns x_0 in the data scale ([−1, 1] for
    images).
    """
    check_sampler(sampler, eta)
    denoiser = as_denoiser(model, diffusion)
    if start_t is not None:
        if x_T is None:
            raise ConfigError("start_t needs the x_t to start from, given as x_T")
        if not 0 <= start_t < diffusion.num_steps:
            raise ConfigError(f"start_t must lie in [0, {diffusion.num_steps - 1}], got {start_t}")
        diffusion = diffusion.truncated(start_t + 1)
    if steps is None:
        steps = default_steps(sampler, diffusion.num_steps)
    if sampler in ("dpm++", "heun"):  # their own grids check the step count
        return _solve_ode(
            denoiser,
            diffusion,
            shape,
            sampler,
            steps,
            clip_x0,
            generator,
            callback,
            device,
            dtype,
            x_T,
            progress,
        )
    timesteps, spaced = spaced_process(diffusion, steps)
    if sampler == "ddpm":  # fail before any network call
        check_learned_variance_respacing(diffusion.variance, len(timesteps), diffusion.num_steps)

    x = _initial_noise(shape, generator, device, dtype, x_T)
    total = spaced.num_steps
    order = range(total - 1, -1, -1)
    with torch.no_grad():
        for counter, i in enumerate(
            tqdm(order, total=total, desc=f"{sampler} sampling", disable=not progress, leave=False)
        ):
            pred = predict(denoiser, diffusion, x, timesteps[i], clip_x0)
            if sampler == "ddpm":
                x = ancestral_step(spaced, pred, x, i, generator)
            else:
                x = _ddim_step(spaced, pred, x, i, eta, generator)
            if callback is not None:
                callback(SamplerStep(counter, total, timesteps[i], x, pred.x0))
    return x


def _solve_ode(
    denoiser: Denoiser,
    diffusion: GaussianDiffusion,
    shape: Sequence[int],
    sampler: str,
    steps: int,
    clip_x0: bool,
    generator: NoiseGenerator | None,
    callback: Callback | None,
    device: torch.device | str | None,
    dtype: torch.dtype,
    x_T: torch.Tensor | None,
    progress: bool,
) -> torch.Tensor:
    """The ODE solvers read x̂_0 from the denoiser at the original timesteps."""
    x = _initial_noise(shape, generator, device, dtype, x_T)
    solver = dpm_solver_pp_2m if sampler == "dpm++" else heun

    def x0_at(x_t: torch.Tensor, t: int) -> torch.Tensor:
        return predict(denoiser, diffusion, x_t, t, clip_x0).x0

    def report(index: int, t: int, x_now: torch.Tensor, pred_x0: torch.Tensor) -> None:
        if callback is not None:
            callback(SamplerStep(index, steps, t, x_now, pred_x0))

    def bar(order: range) -> range:
        return tqdm(order, desc=f"{sampler} sampling", disable=not progress, leave=False)

    with torch.no_grad():
        return solver(diffusion, x0_at, x, steps, report, bar)


def _initial_noise(
    shape: Sequence[int],
    generator: NoiseGenerator | None,
    device: torch.device | str | None,
    dtype: torch.dtype,
    x_T: torch.Tensor | None,
) -> torch.Tensor:
    """x_T ~ N(0, I) from ``generator`` (row by row for a per-sample generator), or the given
    ``x_T`` moved to ``device`` and ``dtype``."""
    if device is None:
        device = x_T.device if x_T is not None else torch.device("cpu")
    device = torch.device(device)
    if x_T is None:
        return normal_like(shape, generator, torch.empty((), device=device, dtype=dtype))
    return x_T.to(device=device, dtype=dtype)
