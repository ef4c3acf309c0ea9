"""Loss weightings over t (min-SNR-γ, P2) and shifted schedules, against their closed forms
written here in numpy from the papers, and their effect on the training loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddpmkit.config import DiffusionConfig
from ddpmkit.diffusion import GaussianDiffusion
from ddpmkit.errors import ConfigError
from gaussian_oracle import cosine_alpha_bar, linear_alpha_bar


def snr(alpha_bar: np.ndarray) -> np.ndarray:
    return alpha_bar / (1 - alpha_bar)


def diffusion(**kw) -> GaussianDiffusion:
    return GaussianDiffusion.from_config(DiffusionConfig(**kw))


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("gamma", [1.0, 5.0])
def test_min_snr_weights_are_the_papers_for_each_target(schedule, gamma):
    """Hang et al. (2023): ε loss × min(SNR, γ)/SNR, x₀ loss × min(SNR, γ), v loss ×
    min(SNR, γ)/(SNR + 1) (their eq. 10 and the v conversion of their §3.3)."""
    s = snr((linear_alpha_bar if schedule == "linear" else cosine_alpha_bar)(1000))
    expected = {
        "eps": np.minimum(s, gamma) / s,
        "x0": np.minimum(s, gamma),
        "v": np.minimum(s, gamma) / (s + 1),
    }
    for prediction, weights in expected.items():
        got = diffusion(
            schedule=schedule, prediction=prediction, loss_weight="min_snr", min_snr_gamma=gamma
        ).loss_weights.numpy()
        np.testing.assert_allclose(got, weights, rtol=1e-9)
    # ε: weight 1 wherever SNR <= γ (the noisy half), below 1 where the image is nearly clean
    w = expected["eps"]
    assert np.all(w[s <= gamma] == 1) and np.all(w[s > gamma] < 1)


@pytest.mark.parametrize("gamma, k", [(1.0, 1.0), (0.5, 1.0), (1.0, 5.0)])
def test_p2_weights_are_the_papers(gamma, k):
    """Choi et al. (2022), eq. 8: the ε loss × 1/(k + SNR)^γ; for the other targets the same
    weighting of the x₀ error, SNR/(k + SNR)^γ, divided by their factor."""
    s = snr(linear_alpha_bar(1000))
    for prediction, factor in (("eps", s), ("x0", 1.0), ("v", s + 1)):
        got = diffusion(
            prediction=prediction, loss_weight="p2", p2_gamma=gamma, p2_k=k
        ).loss_weights.numpy()
        np.testing.assert_allclose(got, s / (k + s) ** gamma / factor, rtol=1e-9)


def test_the_weighted_loss_is_the_weighted_mean_of_per_t_errors():
    """training_loss with min-SNR: each example's mean squared error times the weight of its t
    (computed here from ᾱ), averaged."""
    d = diffusion(loss_weight="min_snr", num_steps=100)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(6, 1, 4, 4, generator=g) * 2 - 1, torch.randn(6, 1, 4, 4, generator=g)
    t = torch.tensor([0, 5, 20, 50, 80, 99])

    def model(x_t, t):
        return torch.zeros_like(x_t)  # predicts ε = 0: the error is ‖ε‖²

    out = d.training_loss(model, x0, t=t, noise=noise)
    s = snr(linear_alpha_bar(100))[t.numpy()]
    expected = noise.double().pow(2).flatten(1).mean(1).numpy() * np.minimum(s, 5.0) / s
    np.testing.assert_allclose(out.per_example.numpy(), expected, rtol=1e-6)
    assert out.loss.item() == pytest.approx(expected.mean(), rel=1e-6)
    plain = diffusion(num_steps=100).training_loss(model, x0, t=t, noise=noise)
    assert plain.per_example.numpy() == pytest.approx(noise.pow(2).flatten(1).mean(1).numpy())


@pytest.mark.parametrize("shift", [0.25, 0.5, 2.0])
def test_a_shifted_schedule_multiplies_the_snr_by_the_shift_squared(shift):
    """Hoogeboom et al. (2023), §3.1: log SNR'(t) = log SNR(t) + 2 log s, so
    ᾱ' = s²ᾱ/(1 − ᾱ + s²ᾱ) at every t; the βs are positive and reproduce ᾱ'."""
    base = cosine_alpha_bar(1000)
    d = diffusion(schedule="cosine", schedule_shift=shift)
    moved = d.schedule.alphas_cumprod.numpy()
    c = shift**2
    # the cosine schedule clips β at 0.999 near t = T; the shift applies to the clipped ᾱ
    clipped = np.cumprod(np.minimum(1 - base / np.concatenate([[1.0], base[:-1]]), 0.999) * -1 + 1)
    formula = c * clipped / (1 - clipped + c * clipped)
    # β' = 1 − ᾱ'_t/ᾱ'_{t−1}, clipped at 0.999 again (only near t = T, for s < 1)
    betas = np.minimum(1 - formula / np.concatenate([[1.0], formula[:-1]]), 0.999)
    np.testing.assert_allclose(d.schedule.betas.numpy(), betas, rtol=1e-9, atol=1e-15)
    unclipped = betas < 0.999
    assert unclipped[:-5].all()  # clipping touches at most the last few steps
    np.testing.assert_allclose(moved[unclipped], formula[unclipped], rtol=1e-9)
    log_ratio = np.log(snr(moved[unclipped])) - np.log(snr(clipped[unclipped]))
    np.testing.assert_allclose(log_ratio, 2 * np.log(shift), atol=1e-6)
    assert bool(((d.schedule.betas > 0) & (d.schedule.betas < 1)).all())
    assert diffusion(schedule_shift=1.0).schedule.name == "linear"  # 1: the schedule itself


def test_bad_weighting_options_are_refused():
    with pytest.raises(ConfigError, match="unknown diffusion.loss_weight 'snr'"):
        DiffusionConfig(loss_weight="snr").validate()
    with pytest.raises(ConfigError, match="min_snr_gamma must be > 0"):
        DiffusionConfig(loss_weight="min_snr", min_snr_gamma=0).validate()
    with pytest.raises(ConfigError, match="loss=kl has none"):
        DiffusionConfig(loss_weight="p2", loss="kl").validate()
    with pytest.raises(ConfigError, match="schedule_shift must be > 0"):
        DiffusionConfig(schedule_shift=-1.0).validate()


def test_an_exported_shifted_schedule_carries_its_betas():
    """diffusers has no name for a shifted schedule: the export writes its βs
    (trained_betas), which diffusers' DDPMScheduler uses as given."""
    from ddpmkit.interop.diffusers_config import scheduler_to_diffusers

    config = DiffusionConfig(schedule="cosine", schedule_shift=0.5, num_steps=100)
    exported = scheduler_to_diffusers(config, clip_x0=True)
    ours = GaussianDiffusion.from_config(config).schedule.betas.numpy()
    np.testing.assert_allclose(exported["trained_betas"], ours, rtol=0)
    assert exported["trained_betas"] is not None
    assert scheduler_to_diffusers(DiffusionConfig(), clip_x0=True)["trained_betas"] is None


def test_every_configurable_weighting_has_its_function_and_no_more():
    """The config's torch-free list of names and the functions keyed by name agree: a name the
    config takes has weights (``none`` has none), and a function cannot hide behind a name the
    config refuses."""
    from ddpmkit.config.diffusion import LOSS_WEIGHTS
    from ddpmkit.loss_weights import WEIGHTINGS

    assert set(WEIGHTINGS) == set(LOSS_WEIGHTS) - {"none"}
    for name in LOSS_WEIGHTS:
        DiffusionConfig(loss_weight=name).validate()  # each name is taken
