"""The U-Net's hyper-parameters (:class:`UNetConfig`) and the names they are checked against;
no torch: the network itself is :class:`ddpmkit.nn.UNet`."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ddpmkit.config.messages import check_choice
from ddpmkit.errors import ConfigError

ATTENTION_KINDS = ("none", "linear", "full")
TIME_CONDITIONINGS = ("scale_shift", "add")
DOWNSAMPLE_PADDINGS = ("symmetric", "same")
TIME_FREQUENCY_ORDERS = ("ddpmkit", "diffusers")
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
    patch_size: int = 1  # > 1: the network runs on p x p patches as channels (space-to-depth)
    time_embed_dim: int | None = None  # the time (and class) embedding's width; None: 4 x base

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
    def time_dim(self) -> int:
        """The width of the time embedding that every block reads: ``time_embed_dim``, or
        4 × ``base_channels`` (Ho et al.'s network, and diffusers' default) when unset."""
        return 4 * self.base_channels if self.time_embed_dim is None else self.time_embed_dim

    @property
    def level_channels(self) -> tuple[int, ...]:
        return tuple(self.base_channels * m for m in self.channel_mults)

    def fit_description(self) -> str:
        """What an image size must fit: ``"a U-Net with N levels"`` (+ ``" on pxp patches"``)."""
        patches = f" on {self.patch_size}x{self.patch_size} patches" if self.patch_size > 1 else ""
        return f"a U-Net with {self.num_levels} levels{patches}"

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this: ``patch_size * 2 ** (levels - 1)``."""
        return self.patch_size * 2 ** (self.num_levels - 1)

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
            "patch_size",
        ):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ConfigError(f"model.{name} must be an integer >= 1, got {value!r}")
        mults = self.channel_mults
        if not isinstance(mults, tuple) or not mults:
            raise ConfigError(
                f"model.channel_mults must be a non-empty list of integers, got {mults!r}"
            )
        if not all(_is_int(m) and m >= 1 for m in mults):
            raise ConfigError(f"model.channel_mults must hold integers >= 1, got {list(mults)}")
        check_choice("model.block_type", self.block_type, BLOCK_TYPES)
        check_choice("model.time_conditioning", self.time_conditioning, TIME_CONDITIONINGS)
        attn = self.attention
        if not isinstance(attn, tuple):
            raise ConfigError(
                f"model.attention must be a list with one of {', '.join(ATTENTION_KINDS)} per "
                f"resolution level, got {attn!r}"
            )
        if len(attn) != len(mults):
            raise ConfigError(
                f"model.attention has {len(attn)} entries but model.channel_mults has "
                f"{len(mults)} levels; give one of {', '.join(ATTENTION_KINDS)} per level"
            )
        for kind in (*attn, self.mid_attention):
            if kind not in ATTENTION_KINDS:
                raise ConfigError(
                    f"unknown attention {kind!r} in model.attention/model.mid_attention; "
                    f"expected one of {', '.join(ATTENTION_KINDS)}"
                )
        time_dim = self.time_embed_dim
        if time_dim is not None and (not _is_int(time_dim) or time_dim < 1):
            raise ConfigError(
                f"model.time_embed_dim must be null or an integer >= 1, got {time_dim!r}"
            )
        head_dim = self.attention_head_dim
        if head_dim is not None and (not _is_int(head_dim) or head_dim < 1):
            raise ConfigError(
                f"model.attention_head_dim must be null or an integer >= 1, got {head_dim!r}"
            )
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, float):
            raise ConfigError(f"model.dropout must be a number in [0, 1), got {self.dropout!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if not isinstance(self.checkpointing, bool):
            raise ConfigError(
                f"model.checkpointing must be true or false, got {self.checkpointing!r}"
            )
        if not isinstance(self.learned_variance, bool):
            raise ConfigError(
                f"model.learned_variance must be true or false, got {self.learned_variance!r}"
            )
        eps = self.norm_eps
        if not isinstance(eps, float) or not (math.isfinite(eps) and 0 < eps < 1):
            raise ConfigError(f"model.norm_eps must be a number in (0, 1), got {eps!r}")
        check_choice("model.downsample_padding", self.downsample_padding, DOWNSAMPLE_PADDINGS)
        if not isinstance(self.time_flip_sin_to_cos, bool):
            raise ConfigError(
                "model.time_flip_sin_to_cos must be true or false, "
                f"got {self.time_flip_sin_to_cos!r}"
            )
        shift = self.time_freq_shift
        if not _is_int(shift) or shift not in (0, 1):
            raise ConfigError(f"model.time_freq_shift must be 0 or 1, got {shift!r}")
        check_choice("model.time_frequencies", self.time_frequencies, TIME_FREQUENCY_ORDERS)
        channels = self.level_channels
        bad = sorted({c for c in channels if c % self.norm_groups})
        if bad:
            raise ConfigError(
                f"model.norm_groups={self.norm_groups} must divide every channel count of the "
                f"U-Net ({'/'.join(map(str, channels))} from base_channels={self.base_channels} "
                f"x channel_mults={list(mults)}), but does not divide {bad[0]}"
            )
        if head_dim is None:
            kinds = [*zip(attn, channels, strict=True), (self.mid_attention, channels[-1])]
            for kind, ch in kinds:
                if kind != "none" and ch % self.attention_heads:
                    raise ConfigError(
                        f"model.attention_heads={self.attention_heads} must divide the {ch} "
                        "channels of every level with attention (or set model.attention_head_dim)"
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
