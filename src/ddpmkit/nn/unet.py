"""The U-Net noise predictor ε_θ(x_t, t).

Architecture of Ho et al. (2020, appendix B) in the layout of improved-diffusion (Nichol &
Dhariwal 2021): conv3x3 in; per resolution level ``blocks_per_resolution`` residual blocks (each
followed by the level's attention, if any) then a stride-2 downsample except at the last level;
a middle block-attention-block; an up path mirroring the down path with one extra block per level,
each block concatenating a skip connection popped from the down path; GN→SiLU→conv3x3 out. The
residual branches, attention projections and output conv are zero-initialised, so a fresh model
predicts exactly zero.

Options for reproducing other implementations exactly (all default to the original behaviour):
``norm_eps`` (GroupNorm epsilon), ``downsample_padding`` ("same": TensorFlow-style padding of
the stride-2 convs) and the time embedding's ``time_flip_sin_to_cos``, ``time_freq_shift`` and
``time_frequencies`` (see :func:`~ddpmkit.nn.embeddings.timestep_embedding`). Together they
express Ho et al.'s CIFAR-10 network as diffusers ships it (``google/ddpm-cifar10-32``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils.checkpoint
from torch import nn

from ddpmkit.errors import ConfigError
from ddpmkit.nn.attention import ATTENTION_KINDS, make_attention
from ddpmkit.nn.blocks import (
    DOWNSAMPLE_PADDINGS,
    TIME_CONDITIONINGS,
    ConvNextBlock,
    Downsample,
    ResBlock,
    Upsample,
    zero_module,
)
from ddpmkit.nn.embeddings import TIME_FREQUENCY_ORDERS, SinusoidalTimeEmbedding
from ddpmkit.precision import autocast_disabled

BLOCK_TYPES = ("resnet", "convnext")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class UNetConfig:
    """Hyper-parameters of :class:`UNet`; JSON-friendly, rebuilt with ``UNetConfig(**d)``.

    Lists given for tuple fields (as JSON returns them) are converted to tuples, and the config
    is validated on construction (:meth:`validate` raises :class:`ConfigError`).
    """

    in_channels: int = 1
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2)
    blocks_per_resolution: int = 1  # the digits recipe; Ho et al.'s CIFAR-10 network has 2
    block_type: str = "resnet"
    attention: tuple[str, ...] = ("none", "none", "full")
    mid_attention: str = "full"
    attention_heads: int = 4
    attention_head_dim: int | None = None
    dropout: float = 0.0
    norm_groups: int = 8
    time_conditioning: str = "scale_shift"
    convnext_mult: int = 2
    learned_variance: bool = False
    num_classes: int = 0  # > 0: class-conditional, with one more "null" class (label K)
    norm_eps: float = 1e-5  # GroupNorm epsilon (Ho et al.'s TensorFlow code: 1e-6)
    downsample_padding: str = "symmetric"  # or "same": pad right/bottom only (TensorFlow)
    time_flip_sin_to_cos: bool = False  # cosines first in the sinusoidal embedding
    time_freq_shift: int = 1  # 0 or 1: frequencies exp(-ln(10⁴)·i/(half − shift))
    time_frequencies: str = "ddpmkit"  # float32 rounding of those: "ddpmkit" or "diffusers"
    checkpointing: bool = False  # recompute each layer in backward instead of keeping activations

    def __post_init__(self) -> None:
        for name in ("channel_mults", "attention"):
            value = getattr(self, name)
            if isinstance(value, list):
                setattr(self, name, tuple(value))
        if _is_int(self.dropout):
            self.dropout = float(self.dropout)
        if _is_int(self.norm_eps):
            self.norm_eps = float(self.norm_eps)
        self.validate()

    @property
    def num_levels(self) -> int:
        return len(self.channel_mults)

    @property
    def out_channels(self) -> int:
        """``in_channels``, doubled when the model also predicts the variance interpolation v."""
        return 2 * self.in_channels if self.learned_variance else self.in_channels

    @property
    def level_channels(self) -> tuple[int, ...]:
        return tuple(self.base_channels * m for m in self.channel_mults)

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this: ``2 ** (levels - 1)``."""
        return 2 ** (self.num_levels - 1)

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad value."""
        if not _is_int(self.num_classes) or self.num_classes < 0:
            raise ConfigError(
                f"model.num_classes must be an integer >= 0, got {self.num_classes!r}"
            )
        for name in (
            "in_channels",
            "base_channels",
            "blocks_per_resolution",
            "attention_heads",
            "norm_groups",
            "convnext_mult",
        ):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ConfigError(f"unet.{name} must be an integer >= 1, got {value!r}")
        mults = self.channel_mults
        if not isinstance(mults, tuple) or not mults:
            raise ConfigError(
                f"unet.channel_mults must be a non-empty list of integers, got {mults!r}"
            )
        if not all(_is_int(m) and m >= 1 for m in mults):
            raise ConfigError(f"unet.channel_mults must hold integers >= 1, got {list(mults)}")
        if self.block_type not in BLOCK_TYPES:
            raise ConfigError(
                f"unet.block_type must be one of {', '.join(BLOCK_TYPES)}, got {self.block_type!r}"
            )
        if self.time_conditioning not in TIME_CONDITIONINGS:
            raise ConfigError(
                f"unet.time_conditioning must be one of {', '.join(TIME_CONDITIONINGS)}, "
                f"got {self.time_conditioning!r}"
            )
        attn = self.attention
        if not isinstance(attn, tuple):
            raise ConfigError(
                f"unet.attention must be a list with one of {', '.join(ATTENTION_KINDS)} per "
                f"resolution level, got {attn!r}"
            )
        if len(attn) != len(mults):
            raise ConfigError(
                f"unet.attention has {len(attn)} entries but unet.channel_mults has "
                f"{len(mults)} levels; give one of {', '.join(ATTENTION_KINDS)} per level"
            )
        for kind in (*attn, self.mid_attention):
            if kind not in ATTENTION_KINDS:
                raise ConfigError(
                    f"unknown attention {kind!r} in unet.attention/unet.mid_attention; "
                    f"expected one of {', '.join(ATTENTION_KINDS)}"
                )
        head_dim = self.attention_head_dim
        if head_dim is not None and (not _is_int(head_dim) or head_dim < 1):
            raise ConfigError(
                f"unet.attention_head_dim must be null or an integer >= 1, got {head_dim!r}"
            )
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, float):
            raise ConfigError(f"unet.dropout must be a number in [0, 1), got {self.dropout!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"unet.dropout must be in [0, 1), got {self.dropout}")
        if not isinstance(self.checkpointing, bool):
            raise ConfigError(
                f"unet.checkpointing must be true or false, got {self.checkpointing!r}"
            )
        if not isinstance(self.learned_variance, bool):
            raise ConfigError(
                f"unet.learned_variance must be true or false, got {self.learned_variance!r}"
            )
        eps = self.norm_eps
        if not isinstance(eps, float) or not (math.isfinite(eps) and 0 < eps < 1):
            raise ConfigError(f"unet.norm_eps must be a number in (0, 1), got {eps!r}")
        if self.downsample_padding not in DOWNSAMPLE_PADDINGS:
            raise ConfigError(
                f"unet.downsample_padding must be one of {', '.join(DOWNSAMPLE_PADDINGS)}, "
                f"got {self.downsample_padding!r}"
            )
        if not isinstance(self.time_flip_sin_to_cos, bool):
            raise ConfigError(
                "unet.time_flip_sin_to_cos must be true or false, "
                f"got {self.time_flip_sin_to_cos!r}"
            )
        shift = self.time_freq_shift
        if not _is_int(shift) or shift not in (0, 1):
            raise ConfigError(f"unet.time_freq_shift must be 0 or 1, got {shift!r}")
        if self.time_frequencies not in TIME_FREQUENCY_ORDERS:
            raise ConfigError(
                f"unet.time_frequencies must be one of {', '.join(TIME_FREQUENCY_ORDERS)}, "
                f"got {self.time_frequencies!r}"
            )
        channels = self.level_channels
        bad = sorted({c for c in channels if c % self.norm_groups})
        if bad:
            raise ConfigError(
                f"unet.norm_groups={self.norm_groups} must divide every channel count of the "
                f"U-Net ({'/'.join(map(str, channels))} from base_channels={self.base_channels} "
                f"x channel_mults={list(mults)}), but does not divide {bad[0]}"
            )
        if head_dim is None:
            kinds = [*zip(attn, channels, strict=True), (self.mid_attention, channels[-1])]
            for kind, ch in kinds:
                if kind != "none" and ch % self.attention_heads:
                    raise ConfigError(
                        f"unet.attention_heads={self.attention_heads} must divide the {ch} "
                        "channels of every level with attention (or set unet.attention_head_dim)"
                    )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON (tuples become lists)."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UNetConfig:
        """Rebuild from :meth:`to_dict` output, with a :class:`ConfigError` for unknown keys."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(
                f"unknown U-Net setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}"
            )
        return cls(**d)


class _Layer(nn.Module):
    """One step of the U-Net: optional block (uses the time embedding), attention, resampling."""

    def __init__(
        self,
        block: nn.Module | None = None,
        attn: nn.Module | None = None,
        resample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.block = block
        self.attn = attn
        self.resample = resample

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.block is not None:
            h = self.block(h, emb)
        if self.attn is not None:
            h = self.attn(h)
        if self.resample is not None:
            h = self.resample(h)
        return h


class UNet(nn.Module):
    """U-Net ε-predictor: ``forward(x (B,C,H,W), t (B,)) -> (B, out_channels, H, W)``."""

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        # A private copy (replace() re-validates), so later edits to ``config`` cannot desync it.
        config = UNetConfig() if config is None else dataclasses.replace(config)
        self.config = config
        base = config.base_channels
        time_dim = 4 * base
        self.time_features = SinusoidalTimeEmbedding(
            base,
            flip_sin_to_cos=config.time_flip_sin_to_cos,
            freq_shift=config.time_freq_shift,
            frequencies=config.time_frequencies,
        )
        self.time_embed = nn.Sequential(
            nn.Linear(base, time_dim),
            nn.SiLU(),
            nn.Linear(time_dim, time_dim),
        )
        # classifier-free guidance (Ho & Salimans 2022): a learned class embedding added to the
        # time embedding, with one extra "null" class (index num_classes) for no class
        self.class_embed = (
            nn.Embedding(config.num_classes + 1, time_dim) if config.num_classes else None
        )

        def block(cin: int, cout: int) -> nn.Module:
            if config.block_type == "convnext":
                return ConvNextBlock(
                    cin,
                    cout,
                    time_dim,
                    mult=config.convnext_mult,
                    dropout=config.dropout,
                    time_conditioning=config.time_conditioning,
                    norm_eps=config.norm_eps,
                )
            return ResBlock(
                cin,
                cout,
                time_dim,
                norm_groups=config.norm_groups,
                dropout=config.dropout,
                time_conditioning=config.time_conditioning,
                norm_eps=config.norm_eps,
            )

        def attention(kind: str, ch: int) -> nn.Module | None:
            return make_attention(
                kind,
                ch,
                heads=config.attention_heads,
                head_dim=config.attention_head_dim,
                norm_groups=config.norm_groups,
                norm_eps=config.norm_eps,
            )

        levels = config.level_channels
        last = len(levels) - 1
        ch = levels[0]
        self.conv_in = nn.Conv2d(config.in_channels, ch, 3, padding=1)
        skip_channels = [ch]
        self.down = nn.ModuleList()
        for level, (out_ch, kind) in enumerate(zip(levels, config.attention, strict=True)):
            for _ in range(config.blocks_per_resolution):
                self.down.append(_Layer(block(ch, out_ch), attention(kind, out_ch)))
                ch = out_ch
                skip_channels.append(ch)
            if level != last:
                self.down.append(_Layer(resample=Downsample(ch, config.downsample_padding)))
                skip_channels.append(ch)

        self.mid = nn.ModuleList(
            [
                _Layer(block(ch, ch), attention(config.mid_attention, ch)),
                _Layer(block(ch, ch)),
            ]
        )

        self.up = nn.ModuleList()
        for level in reversed(range(len(levels))):
            out_ch, kind = levels[level], config.attention[level]
            for i in range(config.blocks_per_resolution + 1):
                upsample = (
                    Upsample(out_ch) if level != 0 and i == config.blocks_per_resolution else None
                )
                self.up.append(
                    _Layer(
                        block(ch + skip_channels.pop(), out_ch),
                        attention(kind, out_ch),
                        upsample,
                    )
                )
                ch = out_ch
        assert not skip_channels

        self.out = nn.Sequential(
            nn.GroupNorm(config.norm_groups, ch, eps=config.norm_eps),
            nn.SiLU(),
            zero_module(nn.Conv2d(ch, config.out_channels, 3, padding=1)),
        )

    def _check_input(self, x: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        cfg = self.config
        if x.ndim != 4:
            raise ConfigError(
                f"U-Net input must have shape (batch, channels, height, width), "
                f"got {tuple(x.shape)}"
            )
        b, c, h, w = x.shape
        if c != cfg.in_channels:
            raise ConfigError(
                f"U-Net expects {cfg.in_channels} input channel(s), got {c} "
                f"(input shape {tuple(x.shape)})"
            )
        m = cfg.size_multiple
        bad = next((s for s in (h, w) if s % m or s < m), None)
        if bad is not None:
            lower = bad // m * m
            examples = [s for s in (lower, lower + m) if s >= m] or [m]
            if len(examples) == 1:
                examples.append(examples[0] + m)
            raise ConfigError(
                f"input {h}x{w} does not fit a U-Net with {cfg.num_levels} levels: height and "
                f"width must be multiples of {m} (e.g. {examples[0]}, {examples[1]})"
            )
        if not isinstance(t, torch.Tensor):
            t = torch.tensor(t, device=x.device)
        t = t.to(x.device)
        if t.ndim == 0 or t.shape == (1,):
            t = t.reshape(1).expand(b)
        if t.shape != (b,):
            raise ConfigError(
                f"timesteps t must have shape ({b},) to match the batch, got {tuple(t.shape)}"
            )
        return t

    def forward(
        self, x: torch.Tensor, t: torch.Tensor | int, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Predict the noise (and, with ``learned_variance``, v) for ``x`` at timesteps ``t``.

        ``t`` has shape (B,); a Python int, a 0-d or a 1-element tensor is broadcast to the batch.
        ``y``: class labels (B,) of a class-conditional network, ``num_classes`` (or None) for
        the unconditional prediction; an unconditional network accepts only None.
        """
        t = self._check_input(x, t)
        features = self.time_features(t).to(self.time_embed[0].weight.dtype)
        emb = self.time_embed(features)
        if self.class_embed is not None:
            if y is None:
                y = torch.full_like(t, self.config.num_classes)
            if y.shape != t.shape:
                raise ConfigError(
                    f"labels y must have shape {tuple(t.shape)}, got {tuple(y.shape)}"
                )
            emb = emb + self.class_embed(y.to(t.device)).to(emb.dtype)
        elif y is not None:
            raise ConfigError("this U-Net is unconditional (model.num_classes = 0): pass no labels")
        h = self.conv_in(x)
        hs = [h]
        run = self._run_layer
        for layer in self.down:
            h = run(layer, h, emb)
            hs.append(h)
        for layer in self.mid:
            h = run(layer, h, emb)
        for layer in self.up:
            h = run(layer, torch.cat([h, hs.pop()], dim=1), emb)
        return self.output_layer(h)

    def _run_layer(self, layer: nn.Module, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """``layer(h, emb)``; with ``checkpointing`` while training with gradients, its
        activations are not kept but recomputed in the backward pass (Chen et al. 2016): memory
        for one more forward pass of each layer. The weights and outputs are unchanged."""
        if self.config.checkpointing and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(layer, h, emb, use_reentrant=False)
        return layer(h, emb)

    def output_layer(self, h: torch.Tensor) -> torch.Tensor:
        """GN→SiLU→conv3x3 out, in the dtype of its weights with autocast switched off.

        Under bfloat16 autocast (``train.amp``) the body runs in bf16, whose 8-bit mantissa would
        round ε̂ to about 3 significant digits; the loss compares ε̂ with ε, so the last layer
        runs on float32 ``h`` with float32 weights and the prediction comes out in float32.
        Without autocast nothing changes (a bf16 model still returns bf16).
        """
        with autocast_disabled(h.device):
            return self.out(h.to(self.out[-1].weight.dtype))

    def num_parameters(self) -> int:
        """Number of parameters (all are trainable)."""
        return sum(p.numel() for p in self.parameters())

    def describe(self) -> str:
        """One-line summary: size, levels, blocks, attention."""
        cfg = self.config
        heads = f"{cfg.attention_heads} head{'s' if cfg.attention_heads > 1 else ''}" + (
            f" x {cfg.attention_head_dim}" if cfg.attention_head_dim else ""
        )
        return (
            f"U-Net {self.num_parameters() / 1e6:.2f}M params: {cfg.num_levels} levels "
            f"(channels {'/'.join(map(str, cfg.level_channels))}), "
            f"{cfg.blocks_per_resolution} {cfg.block_type} blocks/level, "
            f"attention {'/'.join(cfg.attention)} + mid {cfg.mid_attention} ({heads}), "
            f"time {cfg.time_conditioning}, {cfg.in_channels}→{cfg.out_channels} channels"
            + (f", {cfg.num_classes} classes + null" if cfg.num_classes else "")
        )
