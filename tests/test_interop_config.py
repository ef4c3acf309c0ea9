"""Config maps between ddpmkit and diffusers: U-Net and scheduler, both ways, and refusals."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ddpmkit.diffusion import DiffusionConfig
from ddpmkit.interop.diffusers_config import (
    InteropError,
    scheduler_from_diffusers,
    scheduler_to_diffusers,
    unet_from_diffusers,
    unet_to_diffusers,
)
from ddpmkit.nn import UNet, UNetConfig
from ddpmkit.schedules import SCHEDULE_NAMES, make_schedule
from interop_helpers import FIXTURES

CIFAR = FIXTURES / "ddpm-cifar10-32"


def _cifar_unet() -> dict:
    return json.loads((CIFAR / "unet_config.json").read_text())


# ---------------------------------------------------------------------- U-Net
def test_google_cifar10_config_is_ho_et_al_layout() -> None:
    converted = unet_from_diffusers(_cifar_unet())
    config, size = converted.value
    assert size == 32
    assert converted.notes == []
    assert config.base_channels == 128 and config.channel_mults == (1, 2, 2, 2)
    assert config.attention == ("none", "full", "none", "none")  # 16x16 only
    assert config.mid_attention == "full" and config.attention_heads == 1
    assert config.blocks_per_resolution == 2 and config.norm_groups == 32
    assert config.time_conditioning == "add" and config.norm_eps == 1e-6
    assert config.downsample_padding == "same"
    assert not config.time_flip_sin_to_cos and config.time_freq_shift == 1
    assert config.time_frequencies == "diffusers" and config.dropout == 0.0
    # the paper's 35.7M parameters, as configs/cifar10_ddpm.toml
    assert UNet(config).num_parameters() == 35_746_307


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"time_conditioning": "add", "attention_heads": 1, "norm_eps": 1e-6},
        {"attention_head_dim": 16, "attention_heads": 4, "base_channels": 32, "norm_groups": 8},
        {"learned_variance": True, "in_channels": 3, "downsample_padding": "same"},
        {"mid_attention": "none", "attention": ("full", "none", "none")},
        {"time_flip_sin_to_cos": True, "time_freq_shift": 0, "dropout": 0.1},
        {"time_embed_dim": 24},
    ],
)
def test_unet_config_round_trip(options: dict) -> None:
    config = UNetConfig(**{"time_frequencies": "diffusers", **options})
    exported = unet_to_diffusers(config, 16)
    back, size = unet_from_diffusers(exported).value
    assert size == 16
    expected = UNetConfig(**{**config.to_dict(), "attention_head_dim": None})
    assert back == expected


@pytest.mark.parametrize(("given", "read"), [(None, None), (512, None), (128, 128), (96, 96)])
def test_time_embedding_dim_reads_as_time_embed_dim(given: int | None, read: int | None) -> None:
    """diffusers' time_embedding_dim (None: 4 x block_out_channels[0]) is model.time_embed_dim,
    left unset where it is the default width."""
    config, _ = unet_from_diffusers({**_cifar_unet(), "time_embedding_dim": given}).value
    assert config.time_embed_dim == read
    assert config.time_dim == (read or 4 * 128)


def test_missing_keys_take_unet2dmodel_defaults() -> None:
    minimal = {
        "block_out_channels": [32, 64],
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
        "norm_num_groups": 8,
        "sample_size": 16,
    }
    config, _ = unet_from_diffusers(minimal).value
    # UNet2DModel's defaults: flip_sin_to_cos=True, freq_shift=0, attention_head_dim=8
    assert config.time_flip_sin_to_cos and config.time_freq_shift == 0
    assert config.attention_heads == 8 and config.in_channels == 3
    assert config.norm_eps == 1e-5 and config.downsample_padding == "symmetric"


def test_patched_unet_has_no_diffusers_weight_names() -> None:
    from ddpmkit.interop.diffusers_weights import to_diffusers

    config = UNetConfig(channel_mults=(1, 2), attention=("none", "full"), patch_size=2)
    with pytest.raises(InteropError, match="model.patch_size=2"):
        to_diffusers(UNet(config).state_dict(), config)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"block_type": "convnext"}, "block_type='convnext'"),
        ({"patch_size": 2}, "patch_size=2"),
        ({"attention": ("none", "linear", "full")}, "'linear'"),
        ({"mid_attention": "linear"}, "'linear'"),
        ({"channel_mults": (2, 2, 4)}, "channel_mults starts with 2"),
        (
            {"attention": ("none", "full", "full"), "channel_mults": (1, 2, 4)},
            "different head dimension per level",
        ),
        ({"attention_head_dim": 8, "attention_heads": 2}, "attention_head_dim=8"),
    ],
)
def test_unrepresentable_unets_are_refused(options: dict, named: str) -> None:
    with pytest.raises(InteropError) as info:
        unet_to_diffusers(UNetConfig(**options), 16)
    message = str(info.value)
    assert named in message and "\n" not in message


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"class_embed_type": "timestep"}, "class_embed_type"),
        ({"num_class_embeds": 10}, "num_class_embeds"),
        ({"center_input_sample": True}, "center_input_sample"),
        ({"time_embedding_type": "fourier"}, "time_embedding_type"),
        ({"act_fn": "mish"}, "act_fn"),
        ({"mid_block_scale_factor": 2}, "mid_block_scale_factor"),
        ({"downsample_type": "resnet"}, "downsample_type"),
        ({"block_out_channels": [128, 192, 256, 256]}, "block_out_channels"),
        (
            {
                "attention_head_dim": 64,
                "down_block_types": ["AttnDownBlock2D"] * 2 + ["DownBlock2D"] * 2,
                "up_block_types": ["UpBlock2D"] * 2 + ["AttnUpBlock2D"] * 2,
            },
            "different number of heads",
        ),
        ({"down_block_types": ["DownBlock2D"] * 4}, "attention on one path only"),
        ({"down_block_types": ["CrossAttnDownBlock2D"] * 4}, "CrossAttnDownBlock2D"),
        ({"out_channels": 4}, "out_channels=4"),
        ({"sample_size": [32, 64]}, "sample_size"),
        ({"resnet_time_scale_shift": "scale_shift"}, "attn_norm_num_groups"),
        ({"_class_name": "UNet2DConditionModel"}, "UNet2DConditionModel"),
    ],
)
def test_unsupported_diffusers_unets_are_refused(change: dict, named: str) -> None:
    with pytest.raises(InteropError) as info:
        unet_from_diffusers({**_cifar_unet(), **change})
    assert named in str(info.value) and "\n" not in str(info.value)


def test_unknown_unet_keys_are_noted_not_fatal() -> None:
    converted = unet_from_diffusers({**_cifar_unet(), "some_future_option": None})
    assert "some_future_option" in converted.notes[0]


# ---------------------------------------------------------------------- scheduler
def _diffusers_scheduler(config: dict):
    diffusers = pytest.importorskip("diffusers")
    return diffusers.DDPMScheduler.from_config(config)


@pytest.mark.parametrize("schedule", SCHEDULE_NAMES)
@pytest.mark.parametrize("steps", [1000, 200])
def test_exported_schedules_give_our_alpha_bar(schedule: str, steps: int) -> None:
    """diffusers computes β and ᾱ in float32, so they agree to float32 rounding. Measured (T =
    1000 and 200, diffusers 0.42): |Δᾱ| ≤ 4.3e-7; relative ≤ 7.2e-7 where ᾱ > 1e-3 and ≤ 1.3e-5
    at the cosine schedule's last steps (ᾱ ≈ 1e-9, where 1 − β = 0.001 is stored in float32);
    |Δβ| ≤ 2.3e-8."""
    ours = make_schedule(schedule, steps)
    exported = scheduler_to_diffusers(DiffusionConfig(schedule=schedule, num_steps=steps), True)
    theirs = _diffusers_scheduler(exported)
    assert theirs.alphas_cumprod.dtype == torch.float32
    alpha_bar, expected = theirs.alphas_cumprod.to(torch.float64), ours.alphas_cumprod
    relative = ((alpha_bar - expected) / expected).abs()
    assert (alpha_bar - expected).abs().max().item() < 1e-6
    assert relative[expected > 1e-3].max().item() < 1.5e-6
    assert relative.max().item() < 3e-5
    assert (theirs.betas.to(torch.float64) - ours.betas).abs().max().item() < 5e-8
    # and back: the same DiffusionConfig
    diffusion, clip = scheduler_from_diffusers(json.loads(json.dumps(exported))).value
    assert diffusion.schedule == schedule and diffusion.num_steps == steps and clip


def test_quadratic_is_scaled_linear_and_sigmoid_travels_as_trained_betas() -> None:
    quadratic = scheduler_to_diffusers(DiffusionConfig(schedule="quadratic"), True)
    assert quadratic["beta_schedule"] == "scaled_linear" and quadratic["trained_betas"] is None
    sigmoid = scheduler_to_diffusers(DiffusionConfig(schedule="sigmoid"), True)
    assert sigmoid["trained_betas"] == make_schedule("sigmoid", 1000).betas.tolist()
    cosine = scheduler_to_diffusers(DiffusionConfig(schedule="cosine"), True)
    assert cosine["beta_schedule"] == "squaredcos_cap_v2"


@pytest.mark.parametrize(
    ("prediction", "name"), [("eps", "epsilon"), ("x0", "sample"), ("v", "v_prediction")]
)
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large", "learned_range"])
def test_prediction_and_variance_map_both_ways(prediction: str, name: str, variance: str) -> None:
    """(variance="learned" is refused both ways: see test_interop_scheduler.py)"""
    loss = "hybrid" if variance.startswith("learned") else "l2"
    config = DiffusionConfig(prediction=prediction, variance=variance, loss=loss)
    exported = scheduler_to_diffusers(config, clip_x0=False)
    assert exported["prediction_type"] == name and exported["variance_type"] == variance
    assert exported["clip_sample"] is False
    back, clip = scheduler_from_diffusers(exported).value
    assert back == config and clip is False


def test_google_cifar10_scheduler() -> None:
    config = json.loads((CIFAR / "scheduler_config.json").read_text())
    diffusion, clip = scheduler_from_diffusers(config).value
    assert diffusion == DiffusionConfig(schedule="linear", num_steps=1000, variance="fixed_large")
    assert clip
    log_variants = scheduler_from_diffusers({**config, "variance_type": "fixed_small_log"})
    assert log_variants.value[0].variance == "fixed_small"


def test_trained_betas_of_float32_precision_are_recognised() -> None:
    betas = make_schedule("cosine", 100).betas.to(torch.float32).double().tolist()
    diffusion, _ = scheduler_from_diffusers(
        {"num_train_timesteps": 100, "trained_betas": betas}
    ).value
    assert diffusion.schedule == "cosine"


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"beta_end": 0.012}, "beta_end=0.012"),
        ({"beta_schedule": "laplace"}, "beta_schedule='laplace'"),
        ({"trained_betas": [0.01] * 1000}, "trained_betas"),
        ({"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr"),
        ({"thresholding": True}, "thresholding"),
        ({"clip_sample_range": 2.0}, "clip_sample_range"),
        ({"prediction_type": "flow"}, "prediction_type='flow'"),
        ({"_class_name": "EulerDiscreteScheduler"}, "EulerDiscreteScheduler"),
    ],
)
def test_unsupported_schedulers_are_refused(change: dict, named: str) -> None:
    config = json.loads((CIFAR / "scheduler_config.json").read_text())
    with pytest.raises(InteropError) as info:
        scheduler_from_diffusers({**config, **change})
    assert named in str(info.value) and "\n" not in str(info.value)


def test_linear_beta_range_follows_the_number_of_steps() -> None:
    exported = scheduler_to_diffusers(DiffusionConfig(num_steps=250), True)
    assert math.isclose(exported["beta_start"], 4e-4) and math.isclose(exported["beta_end"], 0.08)
    assert scheduler_from_diffusers(exported).value[0].num_steps == 250


@pytest.mark.parametrize("dim", [8, 15, 32, 128, 256])
@pytest.mark.parametrize(("flip", "shift"), [(False, 1), (True, 0), (True, 1), (False, 0)])
def test_time_embedding_matches_diffusers_bit_for_bit(dim: int, flip: bool, shift: int) -> None:
    embeddings = pytest.importorskip("diffusers.models.embeddings")
    from ddpmkit.nn.embeddings import timestep_embedding

    t = torch.tensor([0, 1, 17, 500, 999])
    theirs = embeddings.get_timestep_embedding(t, dim, flip, shift)
    ours = timestep_embedding(
        t, dim, flip_sin_to_cos=flip, freq_shift=shift, frequencies="diffusers"
    )
    assert torch.equal(ours, theirs)
    default = timestep_embedding(t, dim, flip_sin_to_cos=flip, freq_shift=shift)
    assert (default - theirs).abs().max().item() < 2e-4  # the other float32 rounding
