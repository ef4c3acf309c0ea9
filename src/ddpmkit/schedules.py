"""Noise schedules β_t and the arrays derived from them.

Everything is computed in float64 and cast once where it is used. Timesteps are 0-based in code:
index t ∈ {0, …, T−1} stands for the paper's step t+1, so ``betas[0]`` is β_1 of Ho et al. (2020).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ddpmkit.config.diffusion import SCHEDULE_NAMES  # noqa: E402 (named with the config)
from ddpmkit.errors import ConfigError

# Ho et al. (2020), §4: β from 1e-4 to 0.02 over T = 1000 steps.
_BETA_START = 1e-4
_BETA_END = 0.02
_COSINE_OFFSET = 0.008  # s of Nichol & Dhariwal (2021), eq. 17
_MAX_BETA = 0.999  # clipping of Nichol & Dhariwal (2021), §3.2


def _scaled_beta_range(num_steps: int) -> tuple[float, float]:
    """β range of Ho et al. scaled by 1000/T so that the total noise stays comparable for any T."""
    scale = 1000.0 / num_steps
    return scale * _BETA_START, scale * _BETA_END


def linear_betas(num_steps: int) -> torch.Tensor:
    """Linearly increasing β_t (Ho et al. 2020, §4), scaled by 1000/T."""
    start, end = _scaled_beta_range(num_steps)
    return torch.linspace(start, end, num_steps, dtype=torch.float64)


def quadratic_betas(num_steps: int) -> torch.Tensor:
    """β_t whose square roots are linear between √β_start and √β_end (annotated diffusion)."""
    start, end = _scaled_beta_range(num_steps)
    return torch.linspace(math.sqrt(start), math.sqrt(end), num_steps, dtype=torch.float64) ** 2


def sigmoid_betas(num_steps: int) -> torch.Tensor:
    """β_t following a sigmoid over [−6, 6] between β_start and β_end (annotated diffusion)."""
    start, end = _scaled_beta_range(num_steps)
    x = torch.linspace(-6.0, 6.0, num_steps, dtype=torch.float64)
    return torch.sigmoid(x) * (end - start) + start


def cosine_alpha_bar(tau: torch.Tensor, offset: float = _COSINE_OFFSET) -> torch.Tensor:
    """ᾱ(τ) = f(τ)/f(0) with f(τ) = cos²((τ + s)/(1 + s) · π/2), τ ∈ [0, 1].

    Nichol & Dhariwal (2021), eq. 17.
    """

    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.cos((x + offset) / (1 + offset) * math.pi / 2) ** 2

    return f(tau) / f(torch.zeros((), dtype=tau.dtype))


def cosine_betas(num_steps: int) -> torch.Tensor:
    """β_t = 1 − ᾱ(t/T)/ᾱ((t−1)/T), clipped at 0.999 (Nichol & Dhariwal 2021, §3.2)."""
    tau = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    alpha_bar = cosine_alpha_bar(tau)
    return torch.clamp(1 - alpha_bar[1:] / alpha_bar[:-1], max=_MAX_BETA)


_BETA_FUNCTIONS = {
    "linear": linear_betas,
    "cosine": cosine_betas,
    "quadratic": quadratic_betas,
    "sigmoid": sigmoid_betas,
}


@dataclass(frozen=True)
class Schedule:
    """β_t and every array the Gaussian diffusion derives from it (float64, shape (T,)).

    Notation of Ho et al. (2020): α_t = 1 − β_t, ᾱ_t = ∏_{s≤t} α_s, and the posterior
    q(x_{t−1} | x_t, x_0) = N(μ̃_t, β̃_t I) with (eq. 6–7)
    μ̃_t = coef1_t · x_0 + coef2_t · x_t,  coef1 = √ᾱ_{t−1} β_t/(1−ᾱ_t),
    coef2 = √α_t (1−ᾱ_{t−1})/(1−ᾱ_t),  β̃_t = (1−ᾱ_{t−1})/(1−ᾱ_t) · β_t.
    """

    name: str
    betas: torch.Tensor

    def __post_init__(self) -> None:
        betas = self.betas
        if betas.ndim != 1 or betas.numel() < 1:
            raise ConfigError("a schedule needs at least one step (T >= 1)")
        if betas.dtype != torch.float64:
            object.__setattr__(self, "betas", betas.to(torch.float64))
        if not bool(((self.betas > 0) & (self.betas < 1)).all()):
            bad = self.betas[(self.betas <= 0) | (self.betas >= 1)]
            raise ConfigError(
                f"schedule '{self.name}': every beta must lie in (0, 1); found {bad[0].item():.6g}"
            )

    @property
    def num_steps(self) -> int:
        return int(self.betas.numel())

    @property
    def alphas(self) -> torch.Tensor:
        return 1.0 - self.betas

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return torch.cumprod(self.alphas, dim=0)

    @property
    def alphas_cumprod_prev(self) -> torch.Tensor:
        """ᾱ_{t−1} with ᾱ_0 = 1."""
        return torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])

    @property
    def posterior_variance(self) -> torch.Tensor:
        """β̃_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t) · β_t (Ho et al., eq. 7); β̃_1 = 0."""
        return self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

    @property
    def posterior_log_variance_clipped(self) -> torch.Tensor:
        """log β̃_t with the t = 1 entry (which is log 0) replaced by log β̃_2, as the reference
        implementation of Ho et al. does. With T = 1 there is no β̃_2 and β_1 is used."""
        var = self.posterior_variance
        if var.numel() == 1:
            return torch.log(self.betas)
        return torch.log(torch.cat([var[1:2], var[1:]]))

    @property
    def posterior_mean_coef1(self) -> torch.Tensor:
        return self.betas * torch.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

    @property
    def posterior_mean_coef2(self) -> torch.Tensor:
        return (
            (1.0 - self.alphas_cumprod_prev) * torch.sqrt(self.alphas) / (1.0 - self.alphas_cumprod)
        )

    @property
    def fixed_large_log_variance(self) -> torch.Tensor:
        """log σ_t² for σ_t² = β_t, with the first entry set to β̃_2 so that the decoder step's
        variance is not larger than the data scale (as in the reference implementation)."""
        if self.betas.numel() == 1:
            return torch.log(self.betas)
        return torch.log(torch.cat([self.posterior_variance[1:2], self.betas[1:]]))

    def as_dict(self) -> dict[str, torch.Tensor]:
        """Every derived array by name (float64); what the diffusion caches per device/dtype."""
        ac = self.alphas_cumprod
        return {
            "betas": self.betas,
            "alphas_cumprod": ac,
            "alphas_cumprod_prev": self.alphas_cumprod_prev,
            "sqrt_alphas_cumprod": torch.sqrt(ac),
            "sqrt_one_minus_alphas_cumprod": torch.sqrt(1.0 - ac),
            "sqrt_recip_alphas_cumprod": torch.sqrt(1.0 / ac),
            "sqrt_recipm1_alphas_cumprod": torch.sqrt(1.0 / ac - 1.0),
            "posterior_variance": self.posterior_variance,
            "posterior_log_variance_clipped": self.posterior_log_variance_clipped,
            "posterior_mean_coef1": self.posterior_mean_coef1,
            "posterior_mean_coef2": self.posterior_mean_coef2,
            "log_betas": torch.log(self.betas),
        }


class ScheduleTables:
    """A schedule's arrays (:meth:`Schedule.as_dict` and ``fixed_large_log_variance``), cast
    once per (device, dtype) and looked up at integer steps. The diffusion and every time grid
    read their coefficients through one of these."""

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule
        self._tables64 = schedule.as_dict()
        self._tables64["fixed_large_log_variance"] = schedule.fixed_large_log_variance
        self._cache: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}

    def table(self, name: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The whole named array on ``device`` in ``dtype``."""
        key = (name, device, dtype)
        table = self._cache.get(key)
        if table is None:
            table = self._tables64[name].to(device=device, dtype=dtype)
            self._cache[key] = table
        return table

    def coef(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Entry ``t`` (shape (B,)) of the named array, shaped to broadcast against ``like``."""
        values = self.table(name, like.device, like.dtype)[t.to(like.device)]
        return values.reshape(-1, *([1] * (like.ndim - 1)))


def make_schedule(name: str, num_steps: int) -> Schedule:
    """The β schedule ``name`` ∈ {linear, cosine, quadratic, sigmoid} over ``num_steps`` steps."""
    if name not in _BETA_FUNCTIONS:
        raise ConfigError(f"unknown schedule '{name}': choose one of {', '.join(SCHEDULE_NAMES)}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ConfigError(
            f"the number of diffusion steps must be an integer >= 1, got {num_steps!r}"
        )
    return Schedule(name=name, betas=_BETA_FUNCTIONS[name](num_steps))


def shifted_schedule(schedule: Schedule, shift: float) -> Schedule:
    """The schedule whose SNR is ``shift``² times ``schedule``'s at every t (Hoogeboom et al.
    2023, "simple diffusion", §3.1: log SNR shifted by 2 log s; s = 64/d moves a schedule made
    for 64×64 images to d×d): ᾱ'_t = s²ᾱ_t/(1 − ᾱ_t + s²ᾱ_t), β'_t = 1 − ᾱ'_t/ᾱ'_{t−1} clipped
    at 0.999. ``shift`` 1 returns ``schedule`` itself."""
    if shift == 1:
        return schedule
    if not shift > 0:
        raise ConfigError(f"the schedule shift must be > 0, got {shift}")
    c = shift * shift
    alpha_bar = schedule.alphas_cumprod
    moved = c * alpha_bar / (1 - alpha_bar + c * alpha_bar)
    previous = torch.cat([torch.ones(1, dtype=torch.float64), moved[:-1]])
    betas = torch.clamp(1 - moved / previous, max=_MAX_BETA)
    return Schedule(name=f"{schedule.name}-shift{shift:g}", betas=betas)


def edm_sigmas(num_steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """σ_t of the EDM process's table: geometric from σ_min (t = 0) to σ_max (t = T − 1), float64.
    Uniform in ln σ, so EDM's log-normal σ is a normal density over t."""
    return torch.exp(
        torch.linspace(math.log(sigma_min), math.log(sigma_max), num_steps, dtype=torch.float64)
    )


def edm_schedule(num_steps: int, sigma_min: float, sigma_max: float) -> Schedule:
    """The variance-preserving image of EDM's σ table (Karras et al. 2022, §2 and Table 1: x_t =
    s(t)(y + σ n) with s = 1/√(1 + σ²)): ᾱ_t = 1/(1 + σ_t²), so SNR_t = 1/σ_t² and
    x_t^VP = √ᾱ_t (y + σ_t n) = √ᾱ_t y + √(1 − ᾱ_t) n."""
    sigmas = edm_sigmas(num_steps, sigma_min, sigma_max)
    alpha_bar = 1.0 / (1.0 + sigmas**2)
    previous = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
    return Schedule(name="edm", betas=1 - alpha_bar / previous)


# ---------------------------------------------------------------------- continuous time
def _log_alpha_bar_continuous(name: str, tau: torch.Tensor) -> torch.Tensor:
    """log ᾱ(τ) = −∫₀^τ β(u) du for the continuous limit of each schedule (β(u) = T·β_t at
    u = t/T with Ho et al.'s 1000/T scaling), τ ∈ [0, 1]."""
    b0, b1 = 1000 * _BETA_START, 1000 * _BETA_END  # 0.1 and 20, as in the VP SDE
    if name == "linear":
        return -(b0 * tau + 0.5 * (b1 - b0) * tau**2)
    if name == "quadratic":
        a, b = math.sqrt(b0), math.sqrt(b1) - math.sqrt(b0)
        return -(a * a * tau + a * b * tau**2 + b * b * tau**3 / 3)
    if name == "sigmoid":
        # β(u) = b0 + (b1 − b0)·σ(12u − 6); ∫σ(12u − 6) du = softplus(12u − 6)/12
        softplus = torch.nn.functional.softplus
        integral = (softplus(12 * tau - 6) - softplus(torch.full_like(tau, -6.0))) / 12
        return -(b0 * tau + (b1 - b0) * integral)
    if name == "cosine":
        return torch.log(cosine_alpha_bar(tau))
    raise ConfigError(f"unknown schedule '{name}': choose one of {', '.join(SCHEDULE_NAMES)}")


@dataclass(frozen=True)
class ContinuousSchedule:
    """ᾱ as a function of diffusion time τ ∈ [0, 1], optionally confined to signal rates
    √ᾱ ∈ [min_signal_rate, max_signal_rate] (the DDIM write-up's diffusion_schedule).

    With rates given, the schedule's angle φ(τ) (see :meth:`_angle`) is mapped affinely from
    [φ(0), φ(1)] onto [arccos max_rate, arccos min_rate]; the cosine schedule's angle is linear
    in τ, so it becomes exactly the write-up's ᾱ(τ) = cos²(arccos max + τ(arccos min − arccos max)).
    Any number of steps can then be taken: :meth:`discretize` gives a :class:`Schedule`.
    """

    name: str = "cosine"
    min_signal_rate: float | None = None
    max_signal_rate: float | None = None

    def __post_init__(self) -> None:
        if self.name not in SCHEDULE_NAMES:
            raise ConfigError(
                f"unknown schedule '{self.name}': choose one of {', '.join(SCHEDULE_NAMES)}"
            )
        rates = (self.min_signal_rate, self.max_signal_rate)
        if (rates[0] is None) != (rates[1] is None):
            raise ConfigError("give both min_signal_rate and max_signal_rate, or neither")
        if rates[0] is not None and not 0 < rates[0] < rates[1] < 1:
            raise ConfigError("signal rates must satisfy 0 < min_signal_rate < max_signal_rate < 1")

    def alpha_bar(self, tau: torch.Tensor | float) -> torch.Tensor:
        """ᾱ(τ) in float64."""
        tau = torch.as_tensor(tau, dtype=torch.float64)
        if tau.min() < 0 or tau.max() > 1:
            raise ConfigError("diffusion time τ must lie in [0, 1]")
        alpha_bar = torch.exp(_log_alpha_bar_continuous(self.name, tau))
        if self.min_signal_rate is None:
            return alpha_bar
        ends = torch.tensor([0.0, 1.0], dtype=torch.float64)
        angle, end_angles = self._angle(tau, alpha_bar), self._angle(ends, None)
        fraction = (angle - end_angles[0]) / (end_angles[1] - end_angles[0])
        start, stop = math.acos(self.max_signal_rate), math.acos(self.min_signal_rate)
        return torch.cos(start + fraction * (stop - start)) ** 2

    def _angle(self, tau: torch.Tensor, alpha_bar: torch.Tensor | None) -> torch.Tensor:
        """φ(τ) with √ᾱ ∝ cos φ: the cosine schedule's own angle (τ + s)/(1 + s)·π/2, linear in
        τ; arccos √ᾱ(τ) for the others."""
        if self.name == "cosine":
            return (tau + _COSINE_OFFSET) / (1 + _COSINE_OFFSET) * math.pi / 2
        if alpha_bar is None:
            alpha_bar = torch.exp(_log_alpha_bar_continuous(self.name, tau))
        return torch.arccos(torch.sqrt(alpha_bar).clamp(0, 1))

    def discretize(self, num_steps: int) -> Schedule:
        """The T-step schedule with ᾱ_t = ᾱ(t/T), t = 1..T: β_t = 1 − ᾱ(t/T)/ᾱ((t−1)/T) with
        ᾱ_0 = 1 (clean data; with signal rates the first step jumps to ᾱ(1/T) < max_rate²),
        clipped at 0.999 as for the cosine schedule."""
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ConfigError(f"the number of steps must be an integer >= 1, got {num_steps!r}")
        tau = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
        alpha_bar = self.alpha_bar(tau)
        previous = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[1:-1]])
        betas = torch.clamp(1 - alpha_bar[1:] / previous, max=_MAX_BETA)
        return Schedule(name=f"{self.name}-continuous", betas=betas)
