"""State-dict key maps between ddpmkit's ``UNet`` and diffusers' ``UNet2DModel``, both ways.

The two networks have the same tensors up to names and two layout changes in attention:
ddpmkit's ``qkv`` 1x1 conv, weight (3·C, C, 1, 1) laid out ``[q | k | v]``, is diffusers'
``to_q``/``to_k``/``to_v`` linear layers (C, C) each, and its ``proj`` 1x1 conv is ``to_out.0``.
Older diffusers checkpoints name those ``query``/``key``/``value``/``proj_attn``; both spellings
are read. Every conversion is exact (a reshape and a split or concatenation) and checked: a
missing, unexpected or misshapen tensor is a one-line :class:`InteropError`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ddpmkit.interop.diffusers_config import InteropError
from ddpmkit.nn.unet import UNetConfig

_RESNET = {  # ddpmkit ResBlock → diffusers ResnetBlock2D
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "time_proj.1": "time_emb_proj",
    "out_norm": "norm2",
    "out_layers.2": "conv2",
    "skip": "conv_shortcut",
}
_OLD_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _modules(cfg: UNetConfig) -> list[tuple[str, str, str]]:
    """(ddpmkit module path, diffusers module path, kind) for every module with weights;
    kind is "plain" (same tensors), "resnet" or "attention"."""
    out = [
        ("time_embed.0", "time_embedding.linear_1", "plain"),
        ("time_embed.2", "time_embedding.linear_2", "plain"),
        ("conv_in", "conv_in", "plain"),
    ]
    levels = cfg.num_levels
    index = 0
    for level, kind in enumerate(cfg.attention):
        for i in range(cfg.blocks_per_resolution):
            out.append((f"down.{index}.block", f"down_blocks.{level}.resnets.{i}", "resnet"))
            if kind == "full":
                theirs = f"down_blocks.{level}.attentions.{i}"
                out.append((f"down.{index}.attn", theirs, "attention"))
            index += 1
        if level != levels - 1:
            theirs = f"down_blocks.{level}.downsamplers.0.conv"
            out.append((f"down.{index}.resample.conv", theirs, "plain"))
            index += 1
    out.append(("mid.0.block", "mid_block.resnets.0", "resnet"))
    if cfg.mid_attention == "full":
        out.append(("mid.0.attn", "mid_block.attentions.0", "attention"))
    out.append(("mid.1.block", "mid_block.resnets.1", "resnet"))
    index = 0
    for j, level in enumerate(reversed(range(levels))):
        for i in range(cfg.blocks_per_resolution + 1):
            out.append((f"up.{index}.block", f"up_blocks.{j}.resnets.{i}", "resnet"))
            if cfg.attention[level] == "full":
                out.append((f"up.{index}.attn", f"up_blocks.{j}.attentions.{i}", "attention"))
            if level != 0 and i == cfg.blocks_per_resolution:
                theirs = f"up_blocks.{j}.upsamplers.0.conv"
                out.append((f"up.{index}.resample.conv", theirs, "plain"))
            index += 1
    out += [("out.0", "conv_norm_out", "plain"), ("out.2", "conv_out", "plain")]
    return out


def _check_supported(cfg: UNetConfig) -> None:
    if cfg.block_type != "resnet" or any(
        k not in ("full", "none") for k in (*cfg.attention, cfg.mid_attention)
    ):
        raise InteropError(
            "only U-Nets of ResNet blocks and full attention have diffusers weight names"
        )
    if cfg.patch_size != 1:
        raise InteropError(
            f"a U-Net on patches (model.patch_size={cfg.patch_size}) has no diffusers weight "
            "names: UNet2DModel's conv_in and conv_out work on pixels"
        )


def _take(source: dict[str, torch.Tensor], key: str, used: set[str]) -> torch.Tensor:
    if key not in source:
        raise InteropError(f"the weights have no tensor '{key}'")
    used.add(key)
    return source[key]


def _check_all_used(source: Mapping[str, torch.Tensor], used: set[str], side: str) -> None:
    extra = sorted(set(source) - used)
    if extra:
        raise InteropError(
            f"{len(extra)} tensor(s) of the {side} weights have no counterpart "
            f"(e.g. '{extra[0]}'): the weights do not match the config"
        )


def to_diffusers(state: Mapping[str, torch.Tensor], cfg: UNetConfig) -> dict[str, torch.Tensor]:
    """ddpmkit ``UNet`` weights → ``UNet2DModel`` weights (diffusers' current key names)."""
    _check_supported(cfg)
    source, used = dict(state), set()
    out: dict[str, torch.Tensor] = {}
    for ours, theirs, kind in _modules(cfg):
        if kind == "attention":
            for suffix in ("weight", "bias"):
                out[f"{theirs}.group_norm.{suffix}"] = _take(source, f"{ours}.norm.{suffix}", used)
            qkv_w = _take(source, f"{ours}.qkv.weight", used)
            qkv_b = _take(source, f"{ours}.qkv.bias", used)
            for name, w, b in zip(
                ("to_q", "to_k", "to_v"), qkv_w.chunk(3, dim=0), qkv_b.chunk(3, dim=0), strict=True
            ):
                out[f"{theirs}.{name}.weight"] = w.reshape(w.shape[0], w.shape[1]).contiguous()
                out[f"{theirs}.{name}.bias"] = b.contiguous()
            proj = _take(source, f"{ours}.proj.weight", used)
            out[f"{theirs}.to_out.0.weight"] = proj.reshape(proj.shape[0], proj.shape[1])
            out[f"{theirs}.to_out.0.bias"] = _take(source, f"{ours}.proj.bias", used)
            continue
        names = _RESNET.items() if kind == "resnet" else [("", "")]
        for our_sub, their_sub in names:
            for suffix in ("weight", "bias"):
                key = ".".join(p for p in (ours, our_sub, suffix) if p)
                if our_sub == "skip" and key not in source:
                    continue  # identity skip: no conv_shortcut
                out[".".join(p for p in (theirs, their_sub, suffix) if p)] = _take(
                    source, key, used
                )
    _check_all_used(source, used, "ddpmkit")
    return out


def normalize_diffusers_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with the attention names of older diffusers checkpoints (``query``, ``key``,
    ``value``, ``proj_attn``) renamed to today's (``to_q``, ``to_k``, ``to_v``, ``to_out.0``)."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if len(parts) >= 3 and "attentions" in parts and parts[-2] in _OLD_ATTENTION:
            key = ".".join([*parts[:-2], _OLD_ATTENTION[parts[-2]], parts[-1]])
        if key in out:
            raise InteropError(f"the diffusers weights hold '{key}' under both of its names")
        out[key] = value
    return out


def from_diffusers(state: Mapping[str, torch.Tensor], cfg: UNetConfig) -> dict[str, torch.Tensor]:
    """``UNet2DModel`` weights (either attention naming) → ddpmkit ``UNet`` weights."""
    _check_supported(cfg)
    source, used = normalize_diffusers_keys(state), set()
    out: dict[str, torch.Tensor] = {}
    for ours, theirs, kind in _modules(cfg):
        if kind == "attention":
            for suffix in ("weight", "bias"):
                out[f"{ours}.norm.{suffix}"] = _take(source, f"{theirs}.group_norm.{suffix}", used)
            weights = [
                _take(source, f"{theirs}.{n}.weight", used) for n in ("to_q", "to_k", "to_v")
            ]
            biases = [_take(source, f"{theirs}.{n}.bias", used) for n in ("to_q", "to_k", "to_v")]
            if any(w.ndim != 2 for w in weights):
                raise InteropError(f"the attention weights of '{theirs}' are not linear layers")
            qkv = torch.cat(weights, dim=0)
            out[f"{ours}.qkv.weight"] = qkv.reshape(*qkv.shape, 1, 1)
            out[f"{ours}.qkv.bias"] = torch.cat(biases, dim=0)
            proj = _take(source, f"{theirs}.to_out.0.weight", used)
            if proj.ndim != 2:
                raise InteropError(f"the attention output of '{theirs}' is not a linear layer")
            out[f"{ours}.proj.weight"] = proj.reshape(*proj.shape, 1, 1)
            out[f"{ours}.proj.bias"] = _take(source, f"{theirs}.to_out.0.bias", used)
            continue
        names = _RESNET.items() if kind == "resnet" else [("", "")]
        for our_sub, their_sub in names:
            for suffix in ("weight", "bias"):
                key = ".".join(p for p in (theirs, their_sub, suffix) if p)
                if their_sub == "conv_shortcut" and key not in source:
                    continue
                out[".".join(p for p in (ours, our_sub, suffix) if p)] = _take(source, key, used)
    _check_all_used(source, used, "diffusers")
    return out
