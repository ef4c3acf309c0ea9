"""The power-function EMA of Karras et al. (2024): the averaging profile and its width, against
the paper's formulas written out here."""

from __future__ import annotations

import math

import pytest
import torch

from ddpmkit.config import TrainConfig
from ddpmkit.errors import ConfigError
from ddpmkit.train.ema import decay_at, power_ema_exponent, update_ema


@pytest.mark.parametrize("std", [0.05, 0.1, 0.2])
def test_the_exponent_has_the_asked_relative_width(std):
    """σ_rel(γ) = √((γ + 1)/((γ + 2)²(γ + 3))) (Karras et al. 2024, eq. 3) at the γ found, and
    γ is the larger of the two solutions (a profile that grows towards the end)."""
    gamma = power_ema_exponent(std)
    assert math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3))) == pytest.approx(std)
    assert gamma > 0
    # the paper's two stored profiles (§3.2): σ_rel 0.05 ↔ γ = 16.97, 0.10 ↔ γ = 6.94
    paper = {0.05: 16.97, 0.1: 6.94}
    if std in paper:
        assert gamma == pytest.approx(paper[std], abs=0.005)


def test_the_average_weights_step_i_by_the_power_profile():
    """After t updates with β_i = (1 − 1/i)^(γ+1), the EMA equals Σ w_i θ_i / Σ w_i with
    w_i = i^(γ+1) − (i−1)^(γ+1) (the discrete form of the profile ∝ i^γ), for any θ sequence."""
    config = TrainConfig(ema="power", ema_std=0.1)
    gamma = power_ema_exponent(0.1)
    model, ema = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    ema.weight.data.fill_(123.0)  # anything: the first update (β = 0) overwrites it
    thetas = torch.randn(40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for step, theta in enumerate(thetas):
        model.weight.data.fill_(float(theta))
        update_ema(ema, model, decay_at(step, config))
    i = torch.arange(1, 41, dtype=torch.float64)
    w = i ** (gamma + 1) - (i - 1) ** (gamma + 1)
    expected = float((w * thetas).sum() / w.sum())
    assert ema.weight.item() == pytest.approx(expected, rel=1e-5)


def test_the_exponential_ema_is_unchanged_by_default():
    """The default stays the warmed-up exponential EMA, now at the recipe's decay 0.99."""
    config = TrainConfig()
    assert config.ema == "exponential"
    assert decay_at(0, config) == pytest.approx(0.1) and decay_at(10_000, config) == 0.99
    assert decay_at(10_000, TrainConfig(ema_decay=0.995)) == 0.995


def test_bad_ema_options_are_refused():
    with pytest.raises(ConfigError, match="unknown train.ema 'karras'"):
        TrainConfig(ema="karras").validate()
    with pytest.raises(ConfigError, match=r"train.ema_std must lie in \(0, 0.28\]"):
        TrainConfig(ema="power", ema_std=0.5).validate()
