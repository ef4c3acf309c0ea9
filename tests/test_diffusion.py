import numpy as np
import pytest
import torch

from ddpmkit.diffusion import DiffusionConfig, GaussianDiffusion, spaced_timesteps
from ddpmkit.errors import ConfigError
from ddpmkit.sampling.grid import TimeGrid, respaced_schedule
from ddpmkit.schedules import make_schedule
from gaussian_oracle import ALPHA_BAR, GaussianOracle, linear_alpha_bar


def diffusion(name="linear", T=1000, **kw):
    return GaussianDiffusion(make_schedule(name, T), **kw)


def test_q_sample_moments_match_closed_form():
    d = diffusion()
    gen = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = torch.full((n, 1), 0.7, dtype=torch.float64)
    ab = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    for t in (0, 10, 500, 999):
        noise = torch.randn(n, 1, generator=gen, dtype=torch.float64)
        xt = d.q_sample(x0, torch.full((n,), t), noise)
        se = np.sqrt((1 - ab[t]) / n)
        assert abs(xt.mean().item() - np.sqrt(ab[t]) * 0.7) < 5 * se
        assert xt.var().item() == pytest.approx(1 - ab[t], rel=5 * np.sqrt(2 / n))


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_posterior_equals_bayes_rule(name):
    """q(x_{t-1}|x_t,x_0) ∝ q(x_t|x_{t-1}) q(x_{t-1}|x_0), two Gaussians multiplied by hand."""
    d = diffusion(name, 100)
    ab = ALPHA_BAR[name](100)  # from the schedule's formula, not from ddpmkit
    b = 1 - ab / np.concatenate([[1.0], ab[:-1]])
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    xt = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    for t in (1, 2, 50, 99):
        mean, var, log_var = d.q_posterior(x0, xt, torch.full((4,), t))
        prior_var = 1 - ab[t - 1]  # q(x_{t-1} | x_0)
        precision = 1 / prior_var + (1 - b[t]) / b[t]
        expected_var = 1 / precision
        expected_mean = expected_var * (
            np.sqrt(ab[t - 1]) * x0.numpy() / prior_var + np.sqrt(1 - b[t]) * xt.numpy() / b[t]
        )
        np.testing.assert_allclose(mean.numpy(), expected_mean, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(var.numpy(), expected_var, rtol=1e-10)
        np.testing.assert_allclose(log_var.numpy(), np.log(expected_var), rtol=1e-10)
    # t = 1 in the paper (index 0): x_{t-1} = x_0 exactly, variance 0, log variance clipped
    mean, var, log_var = d.q_posterior(x0, xt, torch.zeros(4, dtype=torch.long))
    np.testing.assert_allclose(mean.numpy(), x0.numpy(), rtol=1e-12)
    assert torch.all(var == 0)
    beta_tilde_2 = (1 - ab[0]) / (1 - ab[1]) * b[1]  # eq. 7 at the paper's t = 2
    np.testing.assert_allclose(log_var.numpy(), np.log(beta_tilde_2), rtol=1e-10)


def test_eps_x0_v_round_trips_float64():
    d = diffusion("cosine", 1000)
    gen = torch.Generator().manual_seed(2)
    x0 = torch.randn(8, 2, 4, 4, generator=gen, dtype=torch.float64)
    eps = torch.randn(8, 2, 4, 4, generator=gen, dtype=torch.float64)
    t = torch.tensor([0, 1, 10, 100, 500, 900, 990, 998])
    xt = d.q_sample(x0, t, eps)
    torch.testing.assert_close(d.x0_from_eps(xt, t, eps), x0, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(d.eps_from_x0(xt, t, x0), eps, rtol=1e-7, atol=1e-9)
    v = d.v_from_x0_eps(x0, eps, t)
    torch.testing.assert_close(d.x0_from_v(xt, t, v), x0, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(d.eps_from_v(xt, t, v), eps, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_interpret_recovers_eps_and_x0_for_every_parameterisation(prediction):
    d = diffusion(prediction=prediction)
    gen = torch.Generator().manual_seed(3)
    x0 = torch.randn(5, 1, 2, 2, generator=gen, dtype=torch.float64) * 0.5
    eps = torch.randn(5, 1, 2, 2, generator=gen, dtype=torch.float64)
    t = torch.tensor([3, 30, 300, 600, 999])
    xt = d.q_sample(x0, t, eps)
    pred = d.interpret(d.training_target(x0, eps, t), xt, t)
    torch.testing.assert_close(pred.x0, x0, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(pred.eps, eps, rtol=1e-6, atol=1e-8)


def test_clip_keeps_eps_consistent_with_clipped_x0():
    d = diffusion()
    xt = torch.full((2, 1), 3.0, dtype=torch.float64)
    t = torch.tensor([10, 10])
    pred = d.clip(d.interpret(torch.full((2, 1), -2.0, dtype=torch.float64), xt, t), xt, t)
    assert pred.x0.max() <= 1.0
    torch.testing.assert_close(d.x0_from_eps(xt, t, pred.eps), pred.x0)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_training_loss_of_exact_denoiser_equals_mmse(prediction):
    """For x_0 ~ N(μ, s²) the optimal ε-predictor leaves E(ε−ε̂)² = ᾱs²/(ᾱs² + 1 − ᾱ)."""
    d = diffusion(prediction=prediction)
    ab = linear_alpha_bar(1000)
    model = GaussianOracle(ab, mean=0.1, std=0.3, prediction=prediction)
    gen = torch.Generator().manual_seed(4)
    n = 100_000
    x0 = 0.1 + 0.3 * torch.randn(n, 1, generator=gen, dtype=torch.float64)
    for t in (0, 100, 400, 999):
        out = d.training_loss(model, x0, t=torch.full((n,), t), generator=gen)
        a, s2 = ab[t], 0.09
        mmse_eps = a * s2 / (a * s2 + 1 - a)
        # the x0 / v errors are the ε error rescaled: x0 − x̂0 = −√((1−ᾱ)/ᾱ)(ε − ε̂), v: 1/√ᾱ
        scale = {"eps": 1.0, "x0": (1 - a) / a, "v": 1 / a}[prediction]
        assert out.loss.item() == pytest.approx(mmse_eps * scale, rel=0.03)
        assert out.per_example.shape == (n,)


def test_losses_by_name():
    out = torch.tensor([[0.0, 3.0]])
    target = torch.tensor([[0.5, 0.0]])
    assert diffusion(loss="l2").elementwise_loss(out, target).tolist() == [[0.25, 9.0]]
    assert diffusion(loss="l1").elementwise_loss(out, target).tolist() == [[0.5, 3.0]]
    assert diffusion(loss="huber").elementwise_loss(out, target).tolist() == [[0.125, 2.5]]


def test_training_loss_is_reproducible_with_a_generator():
    d = diffusion()
    x0 = torch.rand(6, 1, 4, 4) * 2 - 1

    def model(x, t):
        return x * 0.5

    a = d.training_loss(model, x0, generator=torch.Generator().manual_seed(9))
    b = d.training_loss(model, x0, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a.t, b.t) and a.loss.item() == b.loss.item()
    assert a.t.min() >= 0 and a.t.max() < 1000


def test_model_output_of_wrong_shape_is_a_clear_error():
    d = diffusion()
    with pytest.raises(ConfigError, match=r"must return \(2, 1, 4, 4\)"):
        d.training_loss(lambda x, t: torch.cat([x, x], 1), torch.zeros(2, 1, 4, 4))


def test_respacing_keeps_alpha_bar_on_the_subset():
    d = diffusion("cosine", 1000)
    steps = spaced_timesteps(1000, 50)
    assert steps[0] == 0 and steps[-1] == 999 and len(steps) == 50
    spaced = respaced_schedule(d.schedule, steps)
    mapping = torch.tensor(steps)
    torch.testing.assert_close(spaced.alphas_cumprod, d.schedule.alphas_cumprod[mapping])
    same = respaced_schedule(d.schedule, list(range(1000)))
    torch.testing.assert_close(same.betas, d.schedule.betas, rtol=1e-12, atol=0)
    grid = TimeGrid.spaced(d.schedule, 50)
    assert list(grid.timesteps) == steps and grid.process.name == "cosine[50]"
    assert TimeGrid.spaced(d.schedule, 1000).process is d.schedule  # every step: not respaced
    with pytest.raises(ConfigError):
        spaced_timesteps(1000, 1001)


def test_config_validation():
    with pytest.raises(ConfigError, match="unknown diffusion.prediction 'score'"):
        DiffusionConfig(prediction="score").validate()
    with pytest.raises(ConfigError, match="unknown variance"):
        GaussianDiffusion(make_schedule("linear", 10 * 100), variance="big")
