"""The U-Net noise predictor ε_θ(x_t, t).

Architecture of Ho et al. (2020, appendix B) in the layout of improved-diffusion (Nichol &
Dhariwal 2021): conv3x3 in; per resolution level ``blocks_per_resolution`` residual blocks (each
followed by the level's attention, if any) then a stride-2 downsample except at the last level;
a middle block-attention-block; an up path mirroring the down path with one extra block per level,
each block concatenating a skip connection popped from the down path; GN→SiLU→conv3x3 out. The
residual branches, attention projections and output conv are zero-initialised, so a fresh model
predicts exactly zero.

``patch_size`` p > 1 runs the whole network on p×p patches stacked as channels (space-to-depth):
an H×W×C image enters as (H/p)×(W/p)×Cp² (``pixel_unshuffle``) and the output conv's
``out_channels``·p² channels are laid back out at H×W (``pixel_shuffle``), so no feature map
has the image's full resolution (Hoogeboom et al. 2023, "simple diffusion": downsample at the
input instead of running high-resolution feature maps; their 2×2 Haar wavelet is this up to a
fixed orthogonal mix of the 4 channels, which the first conv can learn).

Options for reproducing other implementations exactly (all default to the original behaviour):
``norm_eps`` (GroupNorm epsilon), ``downsample_padding`` ("same": TensorFlow-style padding of
the stride-2 convs) and the time embedding's ``time_flip_sin_to_cos``, ``time_freq_shift`` and
``time_frequencies`` (see :func:`~ddpmkit.nn.embeddings.timestep_embedding`). Together they
express Ho et al.'s CIFAR-10 network as diffusers ships it (``google/ddpm-cifar10-32``).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.utils.checkpoint
from torch import nn

from ddpmkit.config.model import UNetConfig
from ddpmkit.errors import ConfigError
from ddpmkit.nn.attention import make_attention
from ddpmkit.nn.blocks import (
    ConvNextBlock,
    Downsample,
    ResBlock,
    Upsample,
    zero_module,
)
from ddpmkit.nn.embeddings import SinusoidalTimeEmbedding
from ddpmkit.nn.norm import GroupNorm
from ddpmkit.precision import autocast_disabled


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
        time_dim = config.time_dim
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
        patch_area = config.patch_size**2
        self.conv_in = nn.Conv2d(config.in_channels * patch_area, ch, 3, padding=1)
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
            GroupNorm(config.norm_groups, ch, eps=config.norm_eps),
            nn.SiLU(),
            zero_module(nn.Conv2d(ch, config.out_channels * patch_area, 3, padding=1)),
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
                f"input {h}x{w} does not fit {cfg.fit_description()}: height and "
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
                y = torch.full(t.shape, self.config.num_classes, dtype=torch.long, device=t.device)
            if y.shape != t.shape:
                raise ConfigError(
                    f"labels y must have shape {tuple(t.shape)}, got {tuple(y.shape)}"
                )
            emb = emb + self.class_embed(y.to(t.device)).to(emb.dtype)
        elif y is not None:
            raise ConfigError("this U-Net is unconditional (model.num_classes = 0): pass no labels")
        patch = self.config.patch_size
        h = self.conv_in(x if patch == 1 else nn.functional.pixel_unshuffle(x, patch))
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
        """GN→SiLU→conv3x3 out, in the dtype of its weights with autocast switched off (and, with
        ``patch_size`` > 1, the patches laid back out as pixels).

        Under bfloat16 autocast (``train.amp``) the body runs in bf16, whose 8-bit mantissa would
        round ε̂ to about 3 significant digits; the loss compares ε̂ with ε, so the last layer
        runs on float32 ``h`` with float32 weights and the prediction comes out in float32.
        Without autocast nothing changes (a bf16 model still returns bf16).
        """
        with autocast_disabled(h.device):
            out = self.out(h.to(self.out[-1].weight.dtype))
        patch = self.config.patch_size
        return out if patch == 1 else nn.functional.pixel_shuffle(out, patch)

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
            + (f", {cfg.patch_size}x{cfg.patch_size} patches" if cfg.patch_size > 1 else "")
            + (f", {cfg.num_classes} classes + null" if cfg.num_classes else "")
        )
