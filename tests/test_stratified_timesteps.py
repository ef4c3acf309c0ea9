"""Stratified draws of t (``train.timestep_sampler=stratified``): one draw from each of B equal
strata of [0, T), checked against the exact distribution of each row, worked out here from
interval overlaps (not from the sampler's formula), and in a short training run."""

from fractions import Fraction

import pytest
import torch

from conftest import tiny_overrides
from ddpmkit.batch_draws import draw_batch, global_rows
from ddpmkit.config import TIMESTEP_SAMPLERS, resolve_config
from ddpmkit.errors import ConfigError
from ddpmkit.timesteps import SAMPLERS, StratifiedSampler, make_timestep_sampler
from ddpmkit.train import Trainer


def row_distribution(row: int, batch: int, num_steps: int) -> dict[int, Fraction]:
    """P(t_row = k): row ``row`` covers [row·T/B, (row+1)·T/B) of the T unit cells uniformly,
    so k has the share of that interval that its cell [k, k+1) overlaps."""
    lo, hi = Fraction(row * num_steps, batch), Fraction((row + 1) * num_steps, batch)
    width = hi - lo
    shares = {}
    for k in range(num_steps):
        overlap = min(hi, k + 1) - max(lo, k)
        if overlap > 0:
            shares[k] = overlap / width
    return shares


def draw_many(batch: int, num_steps: int, draws: int, seed: int = 0) -> torch.Tensor:
    sampler = StratifiedSampler(num_steps)
    generator = torch.Generator().manual_seed(seed)
    cpu = torch.device("cpu")
    return torch.stack([sampler.sample(batch, cpu, generator)[0] for _ in range(draws)])


@pytest.mark.parametrize(("batch", "num_steps"), [(64, 1000), (7, 10), (16, 16), (5, 3)])
def test_each_row_draws_from_its_own_stratum_with_the_exact_shares(batch, num_steps):
    draws = 2000
    ts = draw_many(batch, num_steps, draws)
    assert ts.dtype == torch.long
    for row in range(batch):
        exact = row_distribution(row, batch, num_steps)
        counts = torch.bincount(ts[:, row], minlength=num_steps)
        assert int(counts[[k for k in range(num_steps) if k not in exact]].sum()) == 0
        for k, p in exact.items():  # every cell of the stratum, drawn or not
            p = float(p)
            spread = (p * (1 - p) / draws) ** 0.5
            assert abs(int(counts[k]) / draws - p) <= 5 * spread + 1e-12, (row, k)


def test_over_the_batch_every_t_is_as_likely_as_uniform_and_the_weights_are_one():
    batch, num_steps, draws = 6, 10, 3000
    total = {k: Fraction(0) for k in range(num_steps)}
    for row in range(batch):
        for k, p in row_distribution(row, batch, num_steps).items():
            total[k] += p / batch
    assert all(p == Fraction(1, num_steps) for p in total.values())  # the oracle is uniform
    counts = torch.bincount(draw_many(batch, num_steps, draws).flatten(), minlength=num_steps)
    n = batch * draws
    # rows are independent and each cell's count per row is Bernoulli(≤ 1), so the spread of
    # a cell's total is at most that of n independent draws at p = 1/T
    spread = (n * (1 / num_steps) * (1 - 1 / num_steps)) ** 0.5
    assert (counts.double() - n / num_steps).abs().max() <= 5 * spread
    t, weights = StratifiedSampler(num_steps).sample(batch, torch.device("cpu"))
    assert torch.equal(weights, torch.ones(batch))


def test_the_batch_mean_has_the_stratified_variance_not_the_iid_one():
    """Var of the batch mean of t: Σ_rows Var(t_row) / B² (rows independent) — far below the
    i.i.d. uniform (T² − 1)/(12 B) that a uniform draw gives."""
    batch, num_steps, draws = 8, 1000, 10000
    exact = 0.0
    for row in range(batch):
        dist = row_distribution(row, batch, num_steps)
        mean = sum(float(p) * k for k, p in dist.items())
        exact += sum(float(p) * (k - mean) ** 2 for k, p in dist.items())
    exact /= batch**2
    iid = (num_steps**2 - 1) / (12 * batch)
    generator = torch.Generator().manual_seed(1)
    sampler = make_timestep_sampler("stratified", num_steps)
    means = torch.stack(
        [
            sampler.sample(batch, torch.device("cpu"), generator)[0].double().mean()
            for _ in range(draws)
        ]
    )
    assert means.var().item() == pytest.approx(exact, rel=0.05)
    assert exact < iid / 50


@pytest.mark.parametrize(("grad_accum", "world"), [(1, 2), (2, 1), (2, 2)])
def test_draw_batch_keeps_the_strata_of_the_global_batch(grad_accum, world):
    """Each process keeps its rows of each micro-batch (``global_rows``) of one global draw:
    joined, they are the draw of a single process, and row i lies in stratum i."""
    batch = 8
    common = dict(
        seed=3, attempt=5, batch_size=batch, image_shape=(1, 4, 4), num_steps=1000,
        device=torch.device("cpu"), timestep_sampler=StratifiedSampler(1000),
    )  # fmt: skip
    whole = draw_batch(rows=range(batch), **common).t
    joined = torch.empty_like(whole)
    for micro in range(grad_accum):
        for rank in range(world):
            rows = global_rows(micro, grad_accum, batch, rank, world)
            joined[list(rows)] = draw_batch(rows=rows, **common).t
    assert torch.equal(joined, whole)
    for row, t in enumerate(whole.tolist()):
        assert row * 125 <= t < (row + 1) * 125


def test_a_run_trains_with_stratified_t_and_edm_refuses_it(shapes_npz, tmp_path):
    overrides = tiny_overrides(shapes_npz, "train.timestep_sampler=stratified", "train.steps=3")
    result = Trainer(resolve_config(None, overrides), tmp_path / "run", progress=False).train()
    assert result.step == 3
    with pytest.raises(ConfigError, match="train.timestep_sampler"):
        resolve_config(
            None,
            [*overrides, "diffusion.process=edm", "diffusion.schedule=linear",
             "diffusion.prediction=eps", "diffusion.loss_weight=none"],
        )  # fmt: skip


def test_every_configurable_sampler_has_a_class_and_no_class_is_unreachable():
    assert set(SAMPLERS) == set(TIMESTEP_SAMPLERS)
    for name in TIMESTEP_SAMPLERS:
        assert type(make_timestep_sampler(name, 10)) is SAMPLERS[name]
