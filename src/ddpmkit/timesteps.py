"""How training draws t: uniformly, stratified over the batch (one draw per 1/B of the range; Kingma
et al. 2021's variational diffusion models use the related low-discrepancy draw, one random offset
shared by the batch), or by importance sampling on the loss (Nichol & Dhariwal 2021, §3.3,
eq. 17): p_t ∝ √E[L_t²], with weights 1/(T·p_t) that keep the loss unbiased."""

from __future__ import annotations

import torch

from ddpmkit.config.messages import check_choice
from ddpmkit.config.run import TIMESTEP_SAMPLERS  # noqa: E402 (named with the config)
from ddpmkit.errors import ConfigError


def uniform_timesteps(
    num_steps: int,
    batch: int,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """t ~ Uniform{0, …, T−1}, one per example (Ho et al., Algorithm 1), drawn on the
    generator's device and moved to ``device``: the one place a uniform t is drawn."""
    gen_device = generator.device if generator is not None else device
    t = torch.randint(0, num_steps, (batch,), generator=generator, device=gen_device)
    return t if device is None else t.to(device)


class UniformSampler:
    """t ~ Uniform{0, …, T−1}, weight 1."""

    learns = False  # whether :meth:`update` uses the losses (the trainer gathers them if so)

    def __init__(self, num_steps: int) -> None:
        self.num_steps = num_steps

    def probabilities(self) -> torch.Tensor:
        return torch.full((self.num_steps,), 1.0 / self.num_steps, dtype=torch.float64)

    def sample(
        self, batch: int, device: torch.device, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(t, weights) for a batch; weights = 1/(T·p_t), so E[w·L_t] = mean_t L_t."""
        p = self.probabilities()
        gen_device = generator.device if generator is not None else torch.device("cpu")
        t = torch.multinomial(p.to(gen_device), batch, replacement=True, generator=generator)
        weights = 1.0 / (self.num_steps * p[t.cpu()])
        return t.to(device), weights.to(device=device, dtype=torch.float32)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Record per-example losses at their t (uniform sampling ignores them)."""


class StratifiedSampler(UniformSampler):
    """Stratified (jittered) draws: example i of a batch of B draws t_i uniformly from the i-th of
    B equal strata of [0, T), t_i = ⌊(i·T + r_i)/B⌋ with r_i ~ Uniform{0, …, T−1} (integers only,
    so each cell gets exactly its overlap with the stratum). Every t keeps probability 1/T on
    average over the batch, so the batch loss keeps its expectation (weights 1) and loses the
    variance of how many examples land at high or low noise."""

    def sample(
        self, batch: int, device: torch.device, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        gen_device = generator.device if generator is not None else torch.device("cpu")
        r = torch.randint(0, self.num_steps, (batch,), generator=generator, device=gen_device)
        t = (torch.arange(batch, device=gen_device) * self.num_steps + r) // batch
        return t.to(device), torch.ones(batch, device=device, dtype=torch.float32)


class LossSecondMomentSampler(UniformSampler):
    """p_t ∝ √E[L_t²] over the last ``history`` losses seen at each t, mixed with ``uniform_mass``
    of the uniform distribution; uniform until every t has a full history (the warm-up)."""

    learns = True

    def __init__(self, num_steps: int, history: int = 10, uniform_mass: float = 0.001) -> None:
        super().__init__(num_steps)
        if history < 1 or not 0 < uniform_mass <= 1:
            raise ConfigError("history must be >= 1 and uniform_mass in (0, 1]")
        self.history = history
        self.uniform_mass = uniform_mass
        self.losses = torch.zeros(num_steps, history, dtype=torch.float64)
        self.counts = torch.zeros(num_steps, dtype=torch.long)

    @property
    def warmed_up(self) -> bool:
        return bool((self.counts >= self.history).all())

    def probabilities(self) -> torch.Tensor:
        if not self.warmed_up:
            return super().probabilities()
        p = torch.sqrt((self.losses**2).mean(dim=1))
        p = p / p.sum()
        return (1 - self.uniform_mass) * p + self.uniform_mass / self.num_steps

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        for step, loss in zip(t.tolist(), losses.detach().double().cpu().tolist(), strict=True):
            slot = self.counts[step] % self.history
            self.losses[step, slot] = loss
            self.counts[step] += 1

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"losses": self.losses, "counts": self.counts}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.losses.copy_(tensors["losses"])
        self.counts.copy_(tensors["counts"])


class LogNormalSigmaSampler(UniformSampler):
    """EDM's training distribution of σ (Karras et al. 2022, §5: ln σ ~ N(P_mean, P_std²)) over
    the process's table of σ_t: p_t ∝ exp(−(ln σ_t − P_mean)²/(2 P_std²)). The table is uniform in
    ln σ (:func:`~ddpmkit.schedules.edm_sigmas`), so this is the log-normal density at T points,
    truncated to [σ_min, σ_max]. It defines the objective rather than estimating another one,
    so every weight is 1."""

    def __init__(self, sigmas: torch.Tensor, p_mean: float, p_std: float) -> None:
        super().__init__(len(sigmas))
        log_density = -((torch.log(sigmas.double()) - p_mean) ** 2) / (2 * p_std**2)
        density = torch.exp(log_density - log_density.max())
        self.p = density / density.sum()

    def probabilities(self) -> torch.Tensor:
        return self.p

    def sample(
        self, batch: int, device: torch.device, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        t, _ = super().sample(batch, device, generator)
        return t, torch.ones(batch, device=device, dtype=torch.float32)


SAMPLERS: dict[str, type[UniformSampler]] = {
    "uniform": UniformSampler,
    "stratified": StratifiedSampler,
    "loss_second_moment": LossSecondMomentSampler,
}
"""``train.timestep_sampler`` name → sampler class (EDM's log-normal σ is its process's own)."""


def make_timestep_sampler(name: str, num_steps: int) -> UniformSampler:
    check_choice("timestep sampler", name, TIMESTEP_SAMPLERS)
    return SAMPLERS[name](num_steps)
