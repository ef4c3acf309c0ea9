"""Variances through diffusers' DDPMScheduler: ``learned`` is refused both ways (ddpmkit's network
outputs log σ², diffusers' ``learned`` reads σ²), and one ``DDPMScheduler.step`` of an exported
``learned_range`` run gives ddpmkit's p_θ(x_{t−1} | x_t): checked against a float64 re-statement
of that step written here, and against diffusers itself where it is installed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpmkit.diffusion import DiffusionConfig, GaussianDiffusion
from ddpmkit.errors import ConfigError
from ddpmkit.interop import export_diffusers, import_diffusers
from ddpmkit.interop.diffusers_config import (
    InteropError,
    scheduler_from_diffusers,
    scheduler_to_diffusers,
)
from interop_helpers import FIXTURES, TINY_MODEL, make_run, sample_exported

STEPS = 100
SHAPE = (2, 1, 8, 8)
CIFAR_SCHEDULER = FIXTURES / "ddpm-cifar10-32" / "scheduler_config.json"


def _one_line(err: BaseException) -> str:
    message = str(err)
    assert message and "\n" not in message
    return message


# ---------------------------------------------------------------------- learned: refused
def test_learned_variance_export_is_refused() -> None:
    config = DiffusionConfig(variance="learned", loss="hybrid")
    with pytest.raises(ConfigError) as info:
        scheduler_to_diffusers(config, clip_x0=True)
    message = _one_line(info.value)
    assert isinstance(info.value, InteropError)
    assert "variance='learned'" in message and "log σ²" in message
    assert "learned_range" in message


def test_learned_variance_run_is_not_exported(tmp_path: Path) -> None:
    make_run(
        tmp_path / "run",
        {**TINY_MODEL, "learned_variance": True},
        {"variance": "learned", "loss": "hybrid"},
    )
    with pytest.raises(ConfigError) as info:
        export_diffusers(tmp_path / "run", tmp_path / "pipe")
    assert "variance='learned'" in _one_line(info.value)
    assert not (tmp_path / "pipe").exists()  # refused before anything is written


def test_learned_variance_cli_export_error_is_one_line(tmp_path: Path, capsys) -> None:
    from ddpmkit.cli import main

    make_run(
        tmp_path / "run",
        {**TINY_MODEL, "learned_variance": True},
        {"variance": "learned", "loss": "hybrid"},
    )
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "pipe")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("ddpm export: error:") and "variance='learned'" in err


def test_learned_variance_import_is_refused() -> None:
    config = json.loads(CIFAR_SCHEDULER.read_text())
    with pytest.raises(ConfigError) as info:
        scheduler_from_diffusers({**config, "variance_type": "learned"})
    message = _one_line(info.value)
    assert isinstance(info.value, InteropError)
    assert "variance_type='learned'" in message and "σ²" in message
    assert "learned_range" in message


def test_learned_variance_folder_is_not_imported(tmp_path: Path) -> None:
    """A diffusers folder with variance_type="learned" (here: an exported learned_range run whose
    scheduler is then edited, ddpmkit.json removed) is refused and no run is made."""
    make_run(
        tmp_path / "run",
        {**TINY_MODEL, "learned_variance": True},
        {"variance": "learned_range", "loss": "hybrid"},
    )
    export_diffusers(tmp_path / "run", tmp_path / "pipe")
    (tmp_path / "pipe" / "ddpmkit.json").unlink()
    path = tmp_path / "pipe" / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "variance_type": "learned"}))
    with pytest.raises(ConfigError) as info:
        import_diffusers(tmp_path / "pipe", tmp_path / "back")
    assert "variance_type='learned'" in _one_line(info.value)
    assert not (tmp_path / "back" / "config.json").exists()


@pytest.mark.parametrize(
    ("variance_type", "ours", "noted"),
    [
        ("fixed_small", "fixed_small", False),
        ("fixed_small_log", "fixed_small", False),
        ("fixed_large", "fixed_large", False),
        ("fixed_large_log", "fixed_large", True),
        ("learned_range", "learned_range", False),
    ],
)
def test_other_variance_types_import(variance_type: str, ours: str, noted: bool) -> None:
    config = json.loads(CIFAR_SCHEDULER.read_text())
    converted = scheduler_from_diffusers({**config, "variance_type": variance_type})
    diffusion, _ = converted.value
    assert diffusion.variance == ours
    assert diffusion.loss == ("hybrid" if ours == "learned_range" else "l2")
    assert any("fixed_large_log" in note for note in converted.notes) == noted


# ---------------------------------------------------------------------- learned_range: one step
def _diffusers_betas(config: dict) -> np.ndarray:
    """β of a DDPMScheduler config, re-stated in float64 from diffusers' definitions."""
    steps = config["num_train_timesteps"]
    if config["trained_betas"] is not None:
        return np.asarray(config["trained_betas"], dtype=np.float64)
    kind = config["beta_schedule"]
    if kind == "linear":
        return np.linspace(config["beta_start"], config["beta_end"], steps, dtype=np.float64)
    if kind == "scaled_linear":
        start, end = math.sqrt(config["beta_start"]), math.sqrt(config["beta_end"])
        return np.linspace(start, end, steps, dtype=np.float64) ** 2
    if kind == "squaredcos_cap_v2":

        def alpha_bar(s: float) -> float:
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        return np.array(
            [
                min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999)
                for i in range(steps)
            ]
        )
    raise AssertionError(f"beta_schedule {kind} not re-stated here")


def _reference_step(config: dict, output: np.ndarray, x: np.ndarray, t: int):
    """DDPMScheduler.step (no respacing: prev_t = t − 1) for learned_range, in float64:
    (mean, log σ², x̂_0). The noise added is exp(½ log σ²) · z for t > 0, none at t = 0."""
    channels = x.shape[1]
    model_output, predicted = output[:, :channels], output[:, channels:]
    alphas_cumprod = np.cumprod(1.0 - _diffusers_betas(config))
    prod_t = alphas_cumprod[t]
    prod_prev = alphas_cumprod[t - 1] if t > 0 else 1.0
    alpha_t = prod_t / prod_prev
    beta_t = 1.0 - alpha_t
    if config["prediction_type"] == "epsilon":
        x0 = (x - math.sqrt(1 - prod_t) * model_output) / math.sqrt(prod_t)
    elif config["prediction_type"] == "v_prediction":
        x0 = math.sqrt(prod_t) * x - math.sqrt(1 - prod_t) * model_output
    else:
        x0 = model_output
    if config["clip_sample"]:
        x0 = np.clip(x0, -config["clip_sample_range"], config["clip_sample_range"])
    coef_x0 = math.sqrt(prod_prev) * beta_t / (1 - prod_t)
    coef_x = math.sqrt(alpha_t) * (1 - prod_prev) / (1 - prod_t)
    mean = coef_x0 * x0 + coef_x * x
    small = max((1 - prod_prev) / (1 - prod_t) * beta_t, 1e-20)  # β̃_t, clamped as diffusers
    fraction = (predicted + 1) / 2
    log_variance = fraction * math.log(beta_t) + (1 - fraction) * math.log(small)
    return mean, log_variance, x0


CASES = [
    ("linear", "eps", True),
    ("cosine", "v", False),
]


def _exported_run(tmp_path: Path, schedule: str, prediction: str, clip: bool):
    config, ema = make_run(
        tmp_path / "run",
        {**TINY_MODEL, "learned_variance": True},
        {
            "variance": "learned_range",
            "loss": "hybrid",
            "schedule": schedule,
            "prediction": prediction,
            "num_steps": STEPS,
        },
        data={"image_size": SHAPE[-1]},
        sample={"clip_x0": clip},
    )
    export_diffusers(tmp_path / "run", tmp_path / "pipe")
    return config, ema.double().eval(), tmp_path / "pipe"


def _ours(config, net, t: int, seed: int):
    """(x_t, raw output, ddpmkit's ReverseStep) at step t, all float64."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPE, generator=generator, dtype=torch.float64)
    tt = torch.full((SHAPE[0],), t)
    with torch.no_grad():
        output = net(x, tt)
    # random weights give variance values far outside [-1, 1]; keep them in the trained range
    output[:, SHAPE[1] :] = torch.tanh(output[:, SHAPE[1] :])
    diffusion = GaussianDiffusion.from_config(config.diffusion)
    step = diffusion.reverse_step(output, x, tt, clip_x0=config.sample.clip_x0)
    return x, output, step


@pytest.mark.parametrize(("schedule", "prediction", "clip"), CASES)
@pytest.mark.parametrize("t", [1, 37, STEPS - 1])
def test_learned_range_step_matches_restated_diffusers_formula(
    tmp_path: Path, schedule: str, prediction: str, clip: bool, t: int
) -> None:
    config, net, pipe = _exported_run(tmp_path, schedule, prediction, clip)
    scheduler = json.loads((pipe / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["variance_type"] == "learned_range"
    x, output, step = _ours(config, net, t, seed=t)
    mean, log_variance, x0 = _reference_step(scheduler, output.numpy(), x.numpy(), t)
    np.testing.assert_allclose(step.x0.numpy(), x0, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(step.mean.numpy(), mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(step.log_variance.numpy(), log_variance, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(step.variance.numpy(), np.exp(log_variance), rtol=1e-9)


@pytest.mark.parametrize(("schedule", "prediction", "clip"), CASES)
@pytest.mark.parametrize("t", [1, 37, STEPS - 1])
def test_learned_range_step_matches_diffusers(
    tmp_path: Path, monkeypatch, schedule: str, prediction: str, clip: bool, t: int
) -> None:
    """diffusers' own DDPMScheduler.step, loaded from the exported folder, with the noise it draws
    replaced: zero gives the mean, a known z gives mean + σ z. diffusers works in float32 (its
    ᾱ agrees with ours to ~1e-6 relative): measured ≤ 6e-6 of the values' scale for x̂_0 and the
    mean, ≤ 2.1e-5 for log σ² at the cosine schedule's last step (β clipped at 0.999, whose
    log ≈ −1e-3 float32 resolves coarsely), ≤ 3.5e-6 elsewhere."""
    diffusers = pytest.importorskip("diffusers")
    from diffusers.schedulers import scheduling_ddpm

    config, net, pipe = _exported_run(tmp_path, schedule, prediction, clip)
    scheduler = diffusers.DDPMScheduler.from_pretrained(pipe / "scheduler")
    assert scheduler.config.variance_type == "learned_range"
    x, output, step = _ours(config, net, t, seed=t)
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(100 + t), dtype=torch.float64)

    def run(noise: torch.Tensor):
        def fake_randn(shape, generator=None, device=None, dtype=None, **_):
            assert tuple(shape) == SHAPE
            return noise.to(device=device, dtype=dtype)

        monkeypatch.setattr(scheduling_ddpm, "randn_tensor", fake_randn)
        result = scheduler.step(output.float(), t, x.float())
        return result.prev_sample.double(), result.pred_original_sample.double()

    def close(theirs: torch.Tensor, ours: torch.Tensor, rtol: float = 2e-5) -> None:
        scale = ours.abs().max().item()
        assert (theirs - ours).abs().max().item() <= rtol * scale

    mean, x0 = run(torch.zeros(SHAPE))
    close(x0, step.x0)
    close(mean, step.mean)
    noisy, _ = run(z)
    close(noisy, step.mean + torch.exp(0.5 * step.log_variance) * z)
    # and the log σ² that diffusers' step exponentiates, from its own _get_variance
    theirs = scheduler._get_variance(t, predicted_variance=output[:, SHAPE[1] :].float())
    close(theirs.double(), step.log_variance, rtol=6e-5)
    assert torch.isfinite(noisy).all()


def test_exported_learned_range_pipeline_samples_finite_images(tmp_path: Path) -> None:
    diffusers = pytest.importorskip("diffusers")
    diffusers.utils.logging.set_verbosity_error()
    make_run(
        tmp_path / "run",
        {**TINY_MODEL, "learned_variance": True},
        {"variance": "learned_range", "loss": "hybrid", "num_steps": 20},
        data={"image_size": 8},
    )
    images = sample_exported(tmp_path / "run", tmp_path / "pipe", steps=20)
    assert images.shape == (2, 8, 8, 1) and np.isfinite(images).all()
