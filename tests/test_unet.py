"""Tests of the U-Net noise predictor (ddpmkit.nn)."""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch
from torch import nn

from ddpmkit.errors import ConfigError
from ddpmkit.nn import UNet, UNetConfig
from ddpmkit.nn.attention import FullAttention, LinearAttention
from ddpmkit.nn.blocks import ConvNextBlock, ResBlock
from ddpmkit.nn.embeddings import timestep_embedding

KINDS = ("none", "linear", "full")


def small_config(**overrides: object) -> UNetConfig:
    """A tiny two-level U-Net that runs in milliseconds on 8x8 inputs."""
    fields: dict[str, object] = dict(
        base_channels=8,
        channel_mults=(1, 2),
        blocks_per_resolution=1,
        attention=("linear", "full"),
        mid_attention="full",
        attention_heads=2,
        norm_groups=4,
    )
    fields.update(overrides)
    return UNetConfig(**fields)  # type: ignore[arg-type]


def randomize_zero_params(model: nn.Module, seed: int = 0) -> None:
    """Re-initialise every all-zero parameter (zero-init convs, GN biases...) with small noise."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# --- shapes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("learned_variance", [False, True])
@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("block_type", ["resnet", "convnext"])
def test_output_shape(block_type: str, kind: str, in_channels: int, learned_variance: bool) -> None:
    cfg = small_config(
        block_type=block_type,
        attention=(kind, kind),
        mid_attention=kind,
        in_channels=in_channels,
        learned_variance=learned_variance,
    )
    model = UNet(cfg)
    x = torch.randn(2, in_channels, 8, 8)
    out = model(x, torch.tensor([0, 999]))
    expected_channels = in_channels * (2 if learned_variance else 1)
    assert cfg.out_channels == expected_channels
    assert out.shape == (2, expected_channels, 8, 8)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("time_conditioning", ["add", "scale_shift"])
@pytest.mark.parametrize("block_type", ["resnet", "convnext"])
def test_output_shape_three_levels_non_square(block_type: str, time_conditioning: str) -> None:
    cfg = small_config(
        channel_mults=(1, 2, 2),
        attention=("none", "linear", "full"),
        block_type=block_type,
        time_conditioning=time_conditioning,
        attention_head_dim=3,
        dropout=0.1,
    )
    out = UNet(cfg)(torch.randn(1, 1, 12, 8), 5)
    assert out.shape == (1, 1, 12, 8)


# --- input validation -------------------------------------------------------------------------


def test_odd_size_names_valid_sizes() -> None:
    model = UNet(small_config(channel_mults=(1, 2, 2), attention=("none",) * 3))
    with pytest.raises(ConfigError) as info:
        model(torch.randn(1, 1, 30, 30), 0)
    msg = str(info.value)
    assert "30x30" in msg and "3 levels" in msg and "multiples of 4" in msg
    assert "28, 32" in msg


@pytest.mark.parametrize("size", [(32, 30), (2, 2), (0, 8)])
def test_bad_sizes_raise(size: tuple[int, int]) -> None:
    model = UNet(small_config(channel_mults=(1, 2, 2), attention=("none",) * 3))
    with pytest.raises(ConfigError, match="multiples of 4"):
        model(torch.randn(1, 1, *size), 0)


def _space_to_depth(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, pH, pW) -> (B, C·p², H, W): channel c·p² + i·p + j holds pixel (p·h + i, p·w + j)."""
    b, c, hp, wp = x.shape
    h, w = hp // p, wp // p
    return x.reshape(b, c, h, p, w, p).permute(0, 1, 3, 5, 2, 4).reshape(b, c * p * p, h, w)


def _depth_to_space(x: torch.Tensor, p: int) -> torch.Tensor:
    """The inverse of :func:`_space_to_depth`."""
    b, cpp, h, w = x.shape
    c = cpp // (p * p)
    return x.reshape(b, c, p, p, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c, h * p, w * p)


@pytest.mark.parametrize("learned_variance", [False, True])
@pytest.mark.parametrize(("in_channels", "patch"), [(1, 2), (3, 2), (1, 4)])
def test_patches_are_the_network_on_space_to_depth_pixels(
    in_channels: int, patch: int, learned_variance: bool
) -> None:
    # the patched U-Net is the same network run on the image's p×p patches stacked as channels,
    # its output channels laid back out as pixels: a U-Net of C·p² channels and no patching
    # holds the very same parameters (state-dict shapes equal) and must agree with it
    patched = UNet(
        small_config(in_channels=in_channels, patch_size=patch, learned_variance=learned_variance)
    ).eval()
    randomize_zero_params(patched)
    plain = UNet(
        small_config(in_channels=in_channels * patch**2, learned_variance=learned_variance)
    ).eval()
    plain.load_state_dict(patched.state_dict())
    x = torch.randn(3, in_channels, 8 * patch, 4 * patch)
    t = torch.tensor([0, 400, 999])
    with torch.no_grad():
        got = patched(x, t)
        want = _depth_to_space(plain(_space_to_depth(x, patch), t), patch)
    assert got.shape == (3, patched.config.out_channels, 8 * patch, 4 * patch)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    # the output conv's first C·p² channels are the first C image channels (ε before the
    # variance's v at every pixel): mark them by the conv's bias alone
    conv_out = patched.out[-1]
    with torch.no_grad():
        conv_out.weight.zero_()
        conv_out.bias.zero_()
        conv_out.bias[: in_channels * patch**2] = 1.0
        marked = patched(x, t)
    assert (marked[:, :in_channels] == 1).all() and (marked[:, in_channels:] == 0).all()


def test_patches_change_the_size_multiple_and_the_summary() -> None:
    model = UNet(small_config(patch_size=2))
    assert model.config.size_multiple == 4
    assert model(torch.randn(1, 1, 12, 4), 5).shape == (1, 1, 12, 4)
    with pytest.raises(
        ConfigError, match="a U-Net with 2 levels on 2x2 patches: .* multiples of 4"
    ):
        model(torch.randn(1, 1, 6, 8), 5)
    assert "2x2 patches" in model.describe()
    assert "patches" not in UNet(small_config()).describe()
    # a fresh patched model still predicts exactly zero (zero-initialised output conv)
    assert not model(torch.randn(2, 1, 8, 8), 3).any()
    # the setting travels with the config; a config saved before it existed reads as 1
    saved = model.config.to_dict()
    assert UNetConfig.from_dict(json.loads(json.dumps(saved))).patch_size == 2
    del saved["patch_size"]
    assert UNetConfig.from_dict(saved).patch_size == 1


def test_patched_bf16_training_step_with_checkpointing() -> None:
    # under bf16 autocast, with activations recomputed in backward, the patched U-Net still
    # returns float32 (the output layer and the depth-to-space after it run in float32) and
    # the gradient reaches the patch-embedding conv and every other parameter
    model = UNet(small_config(patch_size=2, checkpointing=True)).train()
    randomize_zero_params(model)
    x = torch.randn(2, 1, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, torch.tensor([3, 700]))
    assert out.dtype == torch.float32 and out.shape == x.shape
    (out - x).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_single_level_accepts_any_size() -> None:
    model = UNet(small_config(channel_mults=(1,), attention=("full",)))
    assert model(torch.randn(1, 1, 5, 7), 3).shape == (1, 1, 5, 7)


def test_wrong_channel_count_raises() -> None:
    model = UNet(small_config(in_channels=3))
    with pytest.raises(ConfigError, match="3 input channel"):
        model(torch.randn(1, 1, 8, 8), 0)
    with pytest.raises(ConfigError, match="batch, channels, height, width"):
        model(torch.randn(3, 8, 8), 0)


def test_timestep_broadcast_and_shape_check() -> None:
    model = UNet(small_config())
    randomize_zero_params(model)
    x = torch.randn(3, 1, 8, 8)
    ref = model(x, torch.full((3,), 7, dtype=torch.long))
    for t in (7, torch.tensor(7), torch.tensor([7])):
        torch.testing.assert_close(model(x, t), ref)
    with pytest.raises(ConfigError, match=r"shape \(3,\)"):
        model(x, torch.tensor([1, 2]))


def test_runs_in_other_dtypes() -> None:
    model = UNet(small_config()).to(torch.bfloat16)
    out = model(torch.randn(2, 1, 8, 8, dtype=torch.bfloat16), torch.tensor([1, 2]))
    assert out.dtype == torch.bfloat16


# --- config -----------------------------------------------------------------------------------


def test_config_json_round_trip_and_state_dict() -> None:
    cfg = small_config(attention_head_dim=4, learned_variance=True)
    d = json.loads(json.dumps(dataclasses.asdict(cfg)))
    assert isinstance(d["channel_mults"], list)
    rebuilt = UNetConfig(**d)
    assert rebuilt == cfg
    assert isinstance(rebuilt.channel_mults, tuple) and isinstance(rebuilt.attention, tuple)
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg
    assert json.loads(json.dumps(cfg.to_dict())) == cfg.to_dict()
    UNet(rebuilt).load_state_dict(UNet(cfg).state_dict())


BAD_MODEL_SETTINGS = [
    (dict(norm_groups=3), "norm_groups=3 must divide"),
    (dict(attention=("none",)), "1 entries but model.channel_mults has 2 levels"),
    (dict(attention=("none", "flash")), "unknown attention 'flash'"),
    (dict(mid_attention="global"), "unknown attention 'global'"),
    (dict(attention="full"), "model.attention must be a list"),
    (
        dict(block_type="transformer"),
        "unknown model.block_type .transformer.: choose one of resnet",
    ),
    (dict(time_conditioning="film"), "unknown model.time_conditioning .film.: choose one of"),
    (dict(attention_heads=3), "attention_heads=3 must divide"),
    (dict(attention_head_dim=0), "attention_head_dim"),
    (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
    (dict(dropout="0.1"), "dropout must be a number"),
    (dict(in_channels=0), "in_channels must be an integer >= 1"),
    (dict(base_channels=8.0), "base_channels must be an integer"),
    (dict(blocks_per_resolution=True), "blocks_per_resolution must be an integer"),
    (dict(channel_mults=()), "channel_mults must be a non-empty list"),
    (dict(channel_mults=(1, 0)), "channel_mults must hold integers >= 1"),
    (dict(learned_variance="yes"), "learned_variance must be true or false"),
    (dict(patch_size=0), "patch_size must be an integer >= 1"),
    (dict(patch_size=2.0), "patch_size must be an integer >= 1"),
    (dict(attention_heads=5), "set model.attention_head_dim"),
    (dict(time_embed_dim=0), "time_embed_dim must be null or an integer >= 1"),
    (dict(time_embed_dim=32.0), "time_embed_dim must be null or an integer >= 1"),
]


@pytest.mark.parametrize(("overrides", "match"), BAD_MODEL_SETTINGS)
def test_bad_config_raises_naming_keys_a_user_can_type(
    overrides: dict[str, object], match: str
) -> None:
    """The error matches, and every ``section.key`` it names is one that a config file or a
    KEY=VALUE override takes (the section ``model``, not the class's name ``unet``)."""
    from ddpmkit.config import RunConfig

    assert "model" in {f.name for f in dataclasses.fields(RunConfig)}
    with pytest.raises(ConfigError, match=match) as caught:
        small_config(**overrides)
    named = re.findall(r"\b([a-z]+)\.([a-z_]+)\b", str(caught.value))
    assert named, str(caught.value)
    for section, key in named:
        assert section == "model", str(caught.value)
        assert key in {f.name for f in dataclasses.fields(UNetConfig)}, str(caught.value)


def test_config_accepts_heads_not_dividing_when_head_dim_given() -> None:
    model = UNet(small_config(attention_heads=3, attention_head_dim=5))
    assert model(torch.randn(1, 1, 8, 8), 1).shape == (1, 1, 8, 8)


def test_model_keeps_its_own_copy_of_the_config() -> None:
    cfg = small_config()
    model = UNet(cfg)
    cfg.base_channels = 16
    assert model.config.base_channels == 8 and model.config is not cfg


def test_from_dict_unknown_key() -> None:
    with pytest.raises(ConfigError, match="unknown U-Net setting"):
        UNetConfig.from_dict({"base_chanels": 8})


def test_default_config_and_describe() -> None:
    model = UNet()
    text = model.describe()
    assert "\n" not in text
    assert f"{model.num_parameters() / 1e6:.2f}M params" in text
    assert "3 levels" in text and "none/none/full" in text and "mid full" in text


# --- CIFAR-10 model of Ho et al. (2020) -------------------------------------------------------


def test_cifar10_parameter_count_matches_ho_et_al() -> None:
    cfg = UNetConfig(
        in_channels=3,
        base_channels=128,
        channel_mults=(1, 2, 2, 2),
        blocks_per_resolution=2,
        attention=("none", "full", "none", "none"),
        mid_attention="full",
        attention_heads=1,
        dropout=0.1,
        norm_groups=32,
        time_conditioning="add",
    )
    model = UNet(cfg)
    # 35.7M in the paper; 35,746,307 in the reference TF implementation / improved-diffusion.
    assert model.num_parameters() == 35_746_307
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32), torch.tensor([10]))
    assert out.shape == (1, 3, 32, 32)
    assert torch.count_nonzero(out) == 0  # zero-initialised output conv


# --- time embedding ---------------------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [0, 10])
def test_time_embed_dim_sets_the_embedding_every_block_reads(num_classes: int) -> None:
    """Widening the time embedding by one adds, by Ho et al.'s layout (levels of 8 and 16
    channels, one block per level down, two up, two in the middle; scale_shift projects to
    2 x out channels): b + 1 (first linear) + 2E + 2 (the E x E linear) + 2 x Σ block outputs
    (+ K + 1 for the class embedding) parameters."""
    base = 8
    config = dict(
        attention=("none", "full"), time_conditioning="scale_shift", num_classes=num_classes
    )
    block_outputs = (1 + 2) * 8 + (1 + 2) * 16 + 2 * 16
    for width in (20, 32, 57):
        narrow = UNet(small_config(**config, time_embed_dim=width))
        wide = UNet(small_config(**config, time_embed_dim=width + 1))
        expected = base + 1 + 2 * width + 2 + 2 * block_outputs
        expected += num_classes + 1 if num_classes else 0
        assert wide.num_parameters() - narrow.num_parameters() == expected
    assert small_config().time_embed_dim is None and small_config().time_dim == 4 * base
    default = UNet(small_config(**config))
    same = UNet(small_config(**config, time_embed_dim=4 * base))
    assert default.num_parameters() == same.num_parameters()
    x = torch.randn(2, 1, 8, 8)
    same.load_state_dict(default.state_dict())
    assert torch.equal(same(x, torch.tensor([1, 900])), default(x, torch.tensor([1, 900])))


def test_time_embedding_closed_form() -> None:
    t = torch.tensor([0, 7, 123])
    emb = timestep_embedding(t, 16)
    assert emb.shape == (3, 16)
    half = 8

    def freq(i: int) -> float:
        return math.exp(-math.log(10000.0) * i / (half - 1))

    assert emb[1, 0].item() == pytest.approx(math.sin(7.0))
    assert emb[1, half].item() == pytest.approx(math.cos(7.0))
    assert emb[2, 3].item() == pytest.approx(math.sin(123 * freq(3)), abs=1e-5)
    assert emb[2, half + 5].item() == pytest.approx(math.cos(123 * freq(5)), abs=1e-5)
    assert emb[2, half - 1].item() == pytest.approx(math.sin(123e-4), abs=1e-6)
    torch.testing.assert_close(emb[0], torch.cat([torch.zeros(8), torch.ones(8)]))
    odd = timestep_embedding(t, 7)
    assert odd.shape == (3, 7) and torch.all(odd[:, -1] == 0)


def test_different_timesteps_give_different_outputs() -> None:
    model = UNet(small_config())
    randomize_zero_params(model)
    x = torch.randn(1, 1, 8, 8).expand(2, -1, -1, -1)
    out = model(x, torch.tensor([3, 700]))
    assert not torch.allclose(out[0], out[1], atol=1e-4)


# --- initialisation and gradients -------------------------------------------------------------


@pytest.mark.parametrize("block_type", ["resnet", "convnext"])
def test_fresh_model_predicts_zero_and_blocks_are_identity(block_type: str) -> None:
    model = UNet(small_config(block_type=block_type, learned_variance=True))
    out = model(torch.randn(2, 1, 8, 8), torch.tensor([1, 2]))
    assert torch.count_nonzero(out) == 0
    emb = torch.randn(2, 32)
    x = torch.randn(2, 8, 4, 4)
    block = ResBlock(8, 8, 32, norm_groups=4) if block_type == "resnet" else ConvNextBlock(8, 8, 32)
    torch.testing.assert_close(block(x, emb), x)
    for attn in (
        FullAttention(8, heads=2, head_dim=None, norm_groups=4),
        LinearAttention(8, heads=2, head_dim=None, norm_groups=4),
    ):
        torch.testing.assert_close(attn(x), x)


@pytest.mark.parametrize("block_type", ["resnet", "convnext"])
def test_gradient_reaches_every_parameter(block_type: str) -> None:
    model = UNet(small_config(block_type=block_type, learned_variance=True))
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([5, 500])
    # Fresh model: every parameter is in the graph (zero-init makes most gradients zero).
    model(x, t).square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad(set_to_none=True)
    randomize_zero_params(model)
    (model(x, t) * torch.randn(2, 2, 8, 8)).sum().backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not unused


# --- attention references ---------------------------------------------------------------------


@pytest.mark.parametrize("head_dim", [None, 3])
def test_full_attention_matches_reference(head_dim: int | None) -> None:
    attn = FullAttention(8, heads=2, head_dim=head_dim, norm_groups=4)
    randomize_zero_params(attn)
    x = torch.randn(2, 8, 4, 3)
    b, _, h, w = x.shape
    d = attn.head_dim
    hn = nn.functional.group_norm(x, 4, attn.norm.weight, attn.norm.bias, attn.norm.eps)
    qkv = attn.qkv(hn).reshape(b, 3, 2, d, h * w)
    outs = []
    for head in range(2):
        q, k, v = (qkv[:, i, head] for i in range(3))  # (B, d, N)
        weights = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(d), dim=-1)  # (B, N, N)
        outs.append((weights @ v.transpose(1, 2)).transpose(1, 2))  # (B, d, N)
    ref = x + attn.proj(torch.cat(outs, dim=1).reshape(b, 2 * d, h, w))
    torch.testing.assert_close(attn(x), ref, rtol=1e-5, atol=1e-5)


def test_linear_attention_matches_reference() -> None:
    attn = LinearAttention(8, heads=2, head_dim=None, norm_groups=4)
    randomize_zero_params(attn)
    x = torch.randn(2, 8, 4, 4)
    b, _, h, w = x.shape
    hn = nn.functional.group_norm(x, 4, attn.norm.weight, attn.norm.bias, attn.norm.eps)
    qkv = attn.qkv(hn).reshape(b, 3, 2, 4, h * w)
    outs = []
    for head in range(2):
        q, k, v = (qkv[:, i, head] for i in range(3))  # (B, d, N)
        q = torch.softmax(q, dim=1) / math.sqrt(4)  # over features
        k = torch.softmax(k, dim=2)  # over positions
        context = k @ v.transpose(1, 2)  # (B, d, e) = k vᵀ
        outs.append(context.transpose(1, 2) @ q)  # (B, e, N)
    ref = x + attn.out_norm(attn.proj(torch.cat(outs, dim=1).reshape(b, 8, h, w)))
    torch.testing.assert_close(attn(x), ref, rtol=1e-5, atol=1e-5)


# --- packaging --------------------------------------------------------------------------------


@pytest.mark.slow
def test_importing_nn_loads_only_errors_precision_and_the_configs_from_ddpmkit() -> None:
    """The network knows nothing of the diffusion, data or training: besides errors and
    precision it loads only the config dataclasses (``ddpmkit.config``, which import no torch
    and no other ddpmkit module)."""
    code = (
        "import sys, ddpmkit.nn; print(sorted(m for m in sys.modules if m.startswith('ddpmkit')))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout
    loaded = {
        m for m in ast.literal_eval(out) if not m.startswith(("ddpmkit.nn", "ddpmkit.config"))
    }
    assert loaded == {"ddpmkit", "ddpmkit.errors", "ddpmkit.precision"}
