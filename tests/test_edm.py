"""EDM (Karras et al. 2022) as a process under the Denoiser interface: the preconditioning's
identities, the σ ↔ ᾱ mapping to the discrete process in float64, the loss weight, the
log-normal σ, sampling a Gaussian whose exact denoiser is known, and a whole EDM run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import TINY
from ddpmkit.config import DiffusionConfig, resolve_config
from ddpmkit.diffusion import GaussianDiffusion
from ddpmkit.edm import EDMDiffusion, preconditioning
from ddpmkit.errors import ConfigError
from ddpmkit.sampling import sample
from ddpmkit.sampling.denoiser import ModelDenoiser

SIGMA_DATA = 0.5


def edm(**kw) -> EDMDiffusion:
    return GaussianDiffusion.from_config(DiffusionConfig(process="edm", **kw))


def test_the_preconditioning_satisfies_the_papers_identities():
    """Karras et al. (2022), Appendix B.6: the network's input c_in x has unit variance, its
    effective target (y − c_skip x)/c_out has unit variance, and λ(σ) c_out(σ)² = 1 (eq. 8)."""
    sigma = torch.logspace(-3, 2, 50, dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = preconditioning(sigma, SIGMA_DATA)
    s2, d2 = sigma**2, SIGMA_DATA**2
    torch.testing.assert_close(c_in**2 * (d2 + s2), torch.ones_like(sigma))
    target_variance = ((1 - c_skip) ** 2 * d2 + c_skip**2 * s2) / c_out**2
    torch.testing.assert_close(target_variance, torch.ones_like(sigma))
    lam = (s2 + d2) / (sigma * SIGMA_DATA) ** 2
    torch.testing.assert_close(lam * c_out**2, torch.ones_like(sigma))
    torch.testing.assert_close(c_noise, torch.log(sigma) / 4)
    # the loss weight of the process's table is that λ at its σ_t
    d = edm(num_steps=100)
    sig = torch.exp(torch.linspace(math.log(0.002), math.log(80.0), 100, dtype=torch.float64))
    torch.testing.assert_close(d.loss_weights, (sig**2 + d2) / (sig * SIGMA_DATA) ** 2)


def test_sigma_maps_to_the_discrete_process_in_float64():
    """σ_t geometric over [σ_min, σ_max]; ᾱ_t = 1/(1 + σ_t²), so q_sample(y, t, n) of the
    discrete process is (y + σ_t n)/√(1 + σ_t²), the variance-preserving scaling of EDM's x."""
    d = edm(num_steps=1000)
    sigma = np.exp(np.linspace(np.log(0.002), np.log(80.0), 1000))
    np.testing.assert_allclose(d.sigmas.numpy(), sigma, rtol=1e-12)
    # ᾱ is the product of the table's 1 − β_t: equal to 1/(1 + σ_t²) up to float64 rounding
    np.testing.assert_allclose(d.schedule.alphas_cumprod.numpy(), 1 / (1 + sigma**2), rtol=1e-10)
    g = torch.Generator().manual_seed(0)
    y = torch.rand(5, 1, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    n = torch.randn(5, 1, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 900, 999])
    s = torch.from_numpy(sigma)[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(d.q_sample(y, t, n), (y + s * n) / torch.sqrt(1 + s**2))


def ideal_network(y: torch.Tensor, offset: float = 0.0):
    """A network that knows y: from its inputs (c_in x, ¼ ln σ) it returns EDM's effective
    target F* = (y − c_skip x)/c_out (+ ``offset``), with the coefficients written out here."""

    def network(x_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        sigma = torch.exp(4 * c_noise.double()).view(-1, 1, 1, 1)
        x = x_in.double() * torch.sqrt(sigma**2 + SIGMA_DATA**2)
        c_skip = SIGMA_DATA**2 / (sigma**2 + SIGMA_DATA**2)
        c_out = sigma * SIGMA_DATA / torch.sqrt(sigma**2 + SIGMA_DATA**2)
        return ((y - c_skip * x) / c_out + offset).to(x_in.dtype)

    return network


def test_the_denoiser_reads_the_ideal_network_as_the_clean_image():
    d = edm(num_steps=200)
    g = torch.Generator().manual_seed(1)
    y = torch.rand(4, 1, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    n = torch.randn(4, 1, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 60, 150, 199])
    x_t = d.q_sample(y, t, n)
    pred = ModelDenoiser(ideal_network(y), d)(x_t, t)
    torch.testing.assert_close(pred.x0, y, rtol=0, atol=1e-9)
    torch.testing.assert_close(pred.eps, n, rtol=0, atol=1e-6)


def test_the_edm_loss_weights_the_networks_own_error_by_one():
    """With F = F* + δ the weighted loss λ(σ)‖D − y‖² is δ² at every σ (eq. 8)."""
    d = edm(num_steps=200)
    g = torch.Generator().manual_seed(2)
    y = torch.rand(6, 1, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    t = torch.tensor([0, 20, 70, 120, 160, 199])
    out = d.training_loss(ideal_network(y, offset=0.3), y, t=t, generator=g)
    torch.testing.assert_close(out.per_example, torch.full((6,), 0.09, dtype=torch.float64))


def test_training_draws_ln_sigma_from_the_papers_normal():
    """p_t ∝ N(ln σ_t; P_mean, P_std²) over the table: its mean and spread of ln σ are P_mean and
    P_std (the truncation to [σ_min, σ_max] lies beyond 4 standard deviations)."""
    d = edm(num_steps=1000)
    sampler = d.training_sampler()
    p = sampler.probabilities().numpy()
    ln_sigma = np.log(d.sigmas.numpy())
    mean = (p * ln_sigma).sum()
    assert mean == pytest.approx(-1.2, abs=2e-3)
    assert math.sqrt((p * (ln_sigma - mean) ** 2).sum()) == pytest.approx(1.2, abs=2e-3)
    t, w = sampler.sample(20_000, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert torch.all(w == 1)  # the objective itself, not an importance estimate
    assert float(np.log(d.sigmas.numpy()[t.numpy()]).mean()) == pytest.approx(-1.2, abs=0.03)


class GaussianData(torch.nn.Module):
    """The exact EDM network for data y ~ N(μ, s²) per pixel: D(x; σ) = μ + s²/(s² + σ²)(x − μ)
    is the posterior mean; F = (D − c_skip x)/c_out, from the inputs (c_in x, ¼ ln σ)."""

    def __init__(self, mu: float, s: float) -> None:
        super().__init__()
        self.mu, self.s = mu, s

    def forward(self, x_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        sigma = torch.exp(4 * c_noise.double()).view(-1, 1, 1, 1)
        total = sigma**2 + SIGMA_DATA**2
        x = x_in.double() * torch.sqrt(total)
        d = self.mu + self.s**2 / (self.s**2 + sigma**2) * (x - self.mu)
        c_skip, c_out = SIGMA_DATA**2 / total, sigma * SIGMA_DATA / torch.sqrt(total)
        return ((d - c_skip * x) / c_out).to(x_in.dtype)


@pytest.mark.parametrize(
    "sampler, steps, options",
    [("heun", 40, {}), ("heun", 160, {"churn": 20.0}), ("dpm++", 30, {}), ("ddim", 250, {})],
)
def test_samplers_on_an_edm_process_draw_the_data_distribution(sampler, steps, options):
    """Samples of the exact denoiser of N(0.3, 0.4²) through the EDM process: mean within 0.03
    and standard deviation within 3 % (4,096 pixels). First-order DDIM needs more steps, and
    so does churn, whose steps start from the raised σ̂ (measured: heun with churn 20 gives a
    standard deviation 3 % too wide at 40 steps, 0.4 % at 160)."""
    from ddpmkit.generate import SampleRequest, generate

    d = edm(num_steps=1000)
    request = SampleRequest(n=16, sampler=sampler, steps=steps, clip_x0=False, seed=3, **options)
    images = generate(GaussianData(0.3, 0.4), d, (1, 16, 16), request, "cpu", progress=False)
    x = images.images.double()
    assert float(x.mean()) == pytest.approx(0.3, abs=0.03)
    assert float(x.std()) == pytest.approx(0.4, rel=0.03)


def test_churn_changes_heun_and_is_refused_elsewhere():
    d = edm(num_steps=1000)
    model = GaussianData(0.0, 0.5)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    plain = sample(model, d, (2, 1, 8, 8), "heun", steps=10, generator=g())
    churned = sample(model, d, (2, 1, 8, 8), "heun", steps=10, generator=g())
    assert torch.equal(plain, churned)  # deterministic without churn
    from ddpmkit.generate import SampleRequest, generate

    req = SampleRequest(n=2, sampler="heun", steps=10, seed=0, churn=30.0)
    a = generate(model, d, (1, 8, 8), req, "cpu", progress=False).images
    b = generate(model, d, (1, 8, 8), SampleRequest(n=2, sampler="heun", steps=10, seed=0), "cpu",
                 progress=False).images  # fmt: skip
    assert not torch.equal(a, b)
    with pytest.raises(ConfigError, match="churn applies to heun only"):
        generate(model, d, (1, 8, 8), SampleRequest(n=2, sampler="ddim", churn=1.0), "cpu")


def test_edm_options_that_do_not_fit_are_refused():
    with pytest.raises(ConfigError, match="drop diffusion.prediction"):
        DiffusionConfig(process="edm", prediction="v").validate()
    with pytest.raises(ConfigError, match="variance must be fixed_small or fixed_large"):
        DiffusionConfig(process="edm", variance="learned_range").validate()
    with pytest.raises(ConfigError, match="unknown diffusion.process 'vp'"):
        DiffusionConfig(process="vp").validate()


def test_a_whole_edm_run_trains_samples_resumes_and_refuses_export(tmp_path):
    from ddpmkit.evaluation.nll import run_nll
    from ddpmkit.generate import sample_run
    from ddpmkit.interop.diffusers_config import InteropError
    from ddpmkit.interop.export import export_diffusers
    from ddpmkit.rundir import RunDir
    from ddpmkit.train import Trainer

    overrides = [*TINY, "data.source=digits", "diffusion.process=edm", "train.conditional=true"]
    config = resolve_config(overrides=[*overrides, "train.steps=3"])
    Trainer(config, tmp_path / "run", progress=False).train()
    rest = resolve_config(overrides=[*overrides, "train.steps=5"])
    result = Trainer(rest, tmp_path / "run", resume=True, progress=False).train()
    assert result.step == 5 and math.isfinite(result.final_loss)
    assert RunDir(tmp_path / "run").read_config().diffusion.process == "edm"
    for sampler in ("heun", "dpm++", "ddpm"):
        done = sample_run(tmp_path / "run", n=2, classes="0,1", guidance=1.0, sampler=sampler,
                          steps=4, grid=tmp_path / f"{sampler}.png", progress=False)  # fmt: skip
        assert done.n == 4 and (tmp_path / f"{sampler}.png").is_file()
    from PIL import Image

    from ddpmkit.edit import edit_run

    image = tmp_path / "digit.png"
    Image.fromarray((np.arange(64).reshape(8, 8) * 4).astype(np.uint8)).save(image)
    for extra in ({"method": "repaint", "steps": 4}, {"method": "sdedit", "strength": 0.5}):
        npz = tmp_path / f"{extra['method']}.npz"
        edit_run(tmp_path / "run", str(image), **extra, classes="3", guidance=1.0, npz=npz,
                 grid=tmp_path / "e.png", progress=False)  # fmt: skip
        with np.load(npz) as data:
            assert data["arr_0"].shape[1:] == (8, 8, 1)
    report, _ = run_nll(tmp_path / "run", n=4, out=tmp_path / "nll.json", progress=False)
    assert math.isfinite(report.bits_per_dim) and report.bits_per_dim > 0
    with pytest.raises(InteropError, match="cannot export an EDM run"):
        export_diffusers(tmp_path / "run", tmp_path / "export")
    assert not (tmp_path / "export").exists()
    with pytest.raises(ConfigError, match="applies to ddpm runs only"):
        resolve_config(overrides=[*overrides, "train.timestep_sampler=loss_second_moment"])
