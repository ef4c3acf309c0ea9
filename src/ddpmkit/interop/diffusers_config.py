"""Config maps between ddpmkit and diffusers: ``UNetConfig`` ↔ ``UNet2DModel``'s config.json and
``DiffusionConfig`` (+ ``sample.clip_x0``) ↔ ``DDPMScheduler``'s scheduler_config.json.

Both directions refuse, with one line naming the setting, whatever the other side cannot express
exactly; settings the target ignores (sampling-time spacing of a scheduler, keys of newer
diffusers releases left at their defaults) are passed over and reported as notes.

The architectures correspond one to one (Ho et al.'s layout in both libraries): ddpmkit's level
``i`` is ``down_blocks[i]`` / ``up_blocks[L-1-i]``, ``full`` attention at a level is an
``Attn{Down,Up}Block2D``, the middle attention is ``add_attention``, ``time_conditioning`` is
``resnet_time_scale_shift`` ("add" ↔ "default"), ``learned_variance`` doubles ``out_channels``.

The variances, as ``DDPMScheduler._get_variance`` and ``step`` read them (diffusers 0.42.1)
for t > 0, the noise added being ``std · z`` (none at t = 0):

* ``fixed_small``: std = √β̃_t; ``fixed_small_log``: std = exp(½ log β̃_t), the same;
* ``fixed_large``: std = √β_t; ``fixed_large_log``: ``_get_variance`` returns log β_t and
  ``step`` takes its square root, i.e. NaN: imported as GLIDE's meaning, σ² = β_t, with a note;
* ``learned_range``: log σ² = f log β_t + (1 − f) log β̃_t, f = (v + 1)/2, std = exp(½ log σ²):
  ddpmkit's ``learned_range`` (Nichol & Dhariwal's eq. 15) exactly;
* ``learned``: std = √v, the variance channels read as σ² itself, while ddpmkit's ``learned``
  reads them as log σ² (√ of a log-variance is NaN). No config maps one onto the other (the
  U-Net's last layer is linear), so ``learned`` is refused both ways.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ddpmkit.diffusion import LEARNED_VARIANCES, DiffusionConfig
from ddpmkit.errors import ConfigError, DdpmkitError
from ddpmkit.nn.unet import UNetConfig
from ddpmkit.schedules import SCHEDULE_NAMES, _scaled_beta_range, make_schedule, shifted_schedule

DIFFUSERS_VERSION = "0.30.0"
"""Written as ``_diffusers_version``: the oldest release whose UNet2DModel reads every key we
write (``attn_norm_num_groups``, ``downsample_type``, ``upsample_type``)."""

UNET_CLASS = "UNet2DModel"
SCHEDULER_CLASS = "DDPMScheduler"
PIPELINE_CLASS = "DDPMPipeline"

# UNet2DModel.__init__ defaults (diffusers 0.30 … 0.42): the value of a key config.json lacks
UNET_DEFAULTS: dict[str, Any] = {
    "sample_size": None,
    "in_channels": 3,
    "out_channels": 3,
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "freq_shift": 0,
    "flip_sin_to_cos": True,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [224, 448, 672, 896],
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "downsample_padding": 1,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "dropout": 0.0,
    "act_fn": "silu",
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "attn_norm_num_groups": None,
    "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default",
    "add_attention": True,
    "class_embed_type": None,
    "num_class_embeds": None,
    "num_train_timesteps": None,
}

# DDPMScheduler.__init__ defaults
SCHEDULER_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "variance_type": "fixed_small",
    "clip_sample": True,
    "prediction_type": "epsilon",
    "thresholding": False,
    "dynamic_thresholding_ratio": 0.995,
    "clip_sample_range": 1.0,
    "sample_max_value": 1.0,
    "timestep_spacing": "leading",
    "steps_offset": 0,
    "rescale_betas_zero_snr": False,
}
# keys that only change how a scheduler spaces its inference steps, not the model or the process
SAMPLING_ONLY_KEYS = {
    "timestep_spacing",
    "steps_offset",
    "dynamic_thresholding_ratio",
    "sample_max_value",
}

PREDICTION_TO_DIFFUSERS = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
PREDICTION_FROM_DIFFUSERS = {v: k for k, v in PREDICTION_TO_DIFFUSERS.items()}
VARIANCE_FROM_DIFFUSERS = {
    "fixed_small": "fixed_small",
    "fixed_small_log": "fixed_small",  # the same σ² = β̃_t, computed through its log
    "fixed_large": "fixed_large",
    "fixed_large_log": "fixed_large",  # GLIDE's σ² = β_t (diffusers' step gives NaN, see above)
    "learned_range": "learned_range",  # f log β_t + (1 − f) log β̃_t, f = (v + 1)/2, in both
}
# "learned" means log σ² in ddpmkit, σ² in diffusers: refused both ways
LEARNED_EXPORT_REFUSAL = (
    "cannot export to diffusers' DDPMScheduler: diffusion.variance='learned' (this network "
    "outputs log σ², diffusers' variance_type='learned' reads that output as σ² and its "
    "sampling gives NaN); no config maps one onto the other: train with "
    "diffusion.variance=learned_range, which diffusers reads as ddpmkit does"
)
LEARNED_IMPORT_REFUSAL = (
    "cannot import this scheduler: variance_type='learned' (diffusers reads that output as σ², "
    "ddpmkit's variance='learned' as log σ², and ddpmkit has no σ² variance); only "
    "learned_range of the learned variances is read"
)
# beta_schedule of diffusers for each of ours with a closed form there (sigmoid goes as
# trained_betas too, since DDIM/DPM-Solver schedulers lack "sigmoid")
SCHEDULE_TO_DIFFUSERS = {
    "linear": "linear",
    "quadratic": "scaled_linear",  # linspace(√β_start, √β_end)² in both
    "cosine": "squaredcos_cap_v2",  # Nichol & Dhariwal's ᾱ, β clipped at 0.999 in both
    "sigmoid": "sigmoid",
}
_TRAINED_BETAS_RTOL = 1e-6  # trained_betas equal to one of our schedules up to float32 rounding


EDM_EXPORT_REFUSAL = (
    "cannot export an EDM run (diffusion.process=edm) to a DDPMPipeline: its network is called "
    "through EDM's preconditioning (c_in x, ¼ ln σ), which no DDPMScheduler config expresses; "
    "sample it with ddpmkit"
)


class InteropError(DdpmkitError):
    """A model, config or folder that the other library cannot represent or load exactly."""


class VarianceInteropError(InteropError, ConfigError):
    """A variance setting that the other library reads differently (both an
    :class:`InteropError` and a :class:`~ddpmkit.errors.ConfigError`)."""


@dataclass
class Converted:
    """A converted config with what was passed over on the way."""

    value: Any
    notes: list[str] = field(default_factory=list)


def _attention_sites(cfg: UNetConfig) -> list[tuple[str, int]]:
    """(where, channels) of every full-attention block of ``cfg``."""
    sites = [
        (f"level {i}", ch)
        for i, (kind, ch) in enumerate(zip(cfg.attention, cfg.level_channels, strict=True))
        if kind == "full"
    ]
    if cfg.mid_attention == "full":
        sites.append(("the middle block", cfg.level_channels[-1]))
    return sites


# ---------------------------------------------------------------------- U-Net: ours → diffusers
def unet_to_diffusers(cfg: UNetConfig, sample_size: int) -> dict[str, Any]:
    """``UNet2DModel``'s config.json for ``cfg``; :class:`InteropError` for what it lacks."""
    where = "cannot export to diffusers' UNet2DModel"
    num_classes = getattr(cfg, "num_classes", 0)
    if num_classes:
        raise InteropError(
            f"{where}: model.num_classes={num_classes} (class-conditional runs are not exported "
            "yet; DDPMPipeline is unconditional)"
        )
    if cfg.block_type != "resnet":
        raise InteropError(
            f"{where}: model.block_type={cfg.block_type!r} (it has ResNet blocks only)"
        )
    if cfg.patch_size != 1:
        raise InteropError(
            f"{where}: model.patch_size={cfg.patch_size} (it runs on pixels, not patches)"
        )
    linear = [k for k in (*cfg.attention, cfg.mid_attention) if k not in ("full", "none")]
    if linear:
        raise InteropError(
            f"{where}: model.attention/mid_attention {linear[0]!r} (it has full attention only)"
        )
    if cfg.channel_mults[0] != 1:
        raise InteropError(
            f"{where}: model.channel_mults starts with {cfg.channel_mults[0]}, not 1 (its "
            "sinusoidal time features are as wide as the first level, ddpmkit's as base_channels)"
        )
    head_dims: dict[int, list[str]] = {}
    for name, ch in _attention_sites(cfg):
        heads = cfg.attention_heads
        head_dim = cfg.attention_head_dim or ch // heads
        if heads * head_dim != ch:
            raise InteropError(
                f"{where}: model.attention_head_dim={head_dim} x attention_heads={heads} is not "
                f"the {ch} channels of {name} (its attention keeps the channel count)"
            )
        head_dims.setdefault(head_dim, []).append(name)
    if len(head_dims) > 1:
        listed = "; ".join(f"{d} at {', '.join(names)}" for d, names in head_dims.items())
        raise InteropError(
            f"{where}: model.attention_heads={cfg.attention_heads} gives a different head "
            f"dimension per level ({listed}); it has one attention_head_dim for all levels"
        )
    head_dim = next(iter(head_dims), None)
    down = ["AttnDownBlock2D" if k == "full" else "DownBlock2D" for k in cfg.attention]
    up = ["AttnUpBlock2D" if k == "full" else "UpBlock2D" for k in reversed(cfg.attention)]
    return {
        "_class_name": UNET_CLASS,
        "_diffusers_version": DIFFUSERS_VERSION,
        "sample_size": sample_size,
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "center_input_sample": False,
        "time_embedding_type": "positional",
        "time_embedding_dim": cfg.time_embed_dim,
        "freq_shift": cfg.time_freq_shift,
        "flip_sin_to_cos": cfg.time_flip_sin_to_cos,
        "down_block_types": down,
        "mid_block_type": "UNetMidBlock2D",
        "up_block_types": up,
        "block_out_channels": list(cfg.level_channels),
        "layers_per_block": cfg.blocks_per_resolution,
        "mid_block_scale_factor": 1,
        "downsample_padding": 0 if cfg.downsample_padding == "same" else 1,
        "downsample_type": "conv",
        "upsample_type": "conv",
        "dropout": cfg.dropout,
        "act_fn": "silu",
        "attention_head_dim": head_dim,
        "norm_num_groups": cfg.norm_groups,
        # without it the middle attention of a scale_shift UNet2DModel has no GroupNorm
        "attn_norm_num_groups": cfg.norm_groups,
        "norm_eps": cfg.norm_eps,
        "resnet_time_scale_shift": "scale_shift"
        if cfg.time_conditioning == "scale_shift"
        else "default",
        "add_attention": cfg.mid_attention == "full",
        "class_embed_type": None,
        "num_class_embeds": None,
        "num_train_timesteps": None,
    }


# ---------------------------------------------------------------------- U-Net: diffusers → ours
def _int(value: Any, name: str) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InteropError(f"UNet2DModel config: {name} must be an integer, got {value!r}")
    return value


def unet_from_diffusers(d: Mapping[str, Any]) -> Converted:
    """``Converted((UNetConfig, image_size))`` of a ``UNet2DModel`` config.json.

    Missing keys take ``UNet2DModel``'s defaults (note: ``flip_sin_to_cos=True`` and
    ``freq_shift=0`` there). The time embedding is computed as diffusers rounds it
    (``time_frequencies="diffusers"``), so the imported network gives diffusers' output.
    """
    where = "cannot import this UNet2DModel"
    cls = d.get("_class_name", UNET_CLASS)
    if cls != UNET_CLASS:
        raise InteropError(f"{where}: it is a {cls}, and only {UNET_CLASS} is supported")
    notes = []
    unknown = sorted(k for k in d if not k.startswith("_") and k not in UNET_DEFAULTS)
    if unknown:
        notes.append(f"ignored UNet2DModel settings unknown to ddpmkit: {', '.join(unknown)}")
    c = {**UNET_DEFAULTS, **{k: v for k, v in d.items() if k in UNET_DEFAULTS}}

    def refuse(name: str, why: str) -> InteropError:
        return InteropError(f"{where}: {name}={c[name]!r} ({why})")

    fixed = {
        "center_input_sample": (False, "ddpmkit's U-Net takes inputs in [-1, 1] as they are"),
        "time_embedding_type": ("positional", "ddpmkit has the sinusoidal embedding only"),
        "class_embed_type": (None, "class-conditional models are not supported"),
        "num_class_embeds": (None, "class-conditional models are not supported"),
        "mid_block_type": ("UNetMidBlock2D", "ddpmkit's middle block is ResNet-attention-ResNet"),
        "downsample_type": ("conv", "ddpmkit downsamples with a stride-2 conv"),
        "upsample_type": ("conv", "ddpmkit upsamples with nearest x2 and a conv"),
    }
    for name, (expected, why) in fixed.items():
        if c[name] != expected:
            raise refuse(name, why)
    if c["mid_block_scale_factor"] != 1:
        raise refuse("mid_block_scale_factor", "ddpmkit's blocks do not rescale their output")
    if c["act_fn"] not in ("silu", "swish"):
        raise refuse("act_fn", "ddpmkit's ResNet blocks use SiLU")
    shift = c["resnet_time_scale_shift"]
    if shift not in ("default", "scale_shift"):
        raise refuse("resnet_time_scale_shift", "ddpmkit has 'default' (add) and 'scale_shift'")
    channels = [_int(v, "block_out_channels") for v in c["block_out_channels"]]
    down, up = list(c["down_block_types"]), list(c["up_block_types"])
    if not channels or len(down) != len(channels) or len(up) != len(channels):
        raise InteropError(
            f"{where}: block_out_channels, down_block_types and up_block_types must have one "
            f"entry per level, got {len(channels)}, {len(down)} and {len(up)}"
        )
    bad = [t for t in down if t not in ("DownBlock2D", "AttnDownBlock2D")]
    bad += [t for t in up if t not in ("UpBlock2D", "AttnUpBlock2D")]
    if bad:
        raise InteropError(
            f"{where}: block type {bad[0]} (ddpmkit has DownBlock2D/AttnDownBlock2D and "
            "UpBlock2D/AttnUpBlock2D)"
        )
    attention = tuple("full" if t == "AttnDownBlock2D" else "none" for t in down)
    mirrored = tuple("full" if t == "AttnUpBlock2D" else "none" for t in reversed(up))
    if attention != mirrored:
        level = next(i for i, (a, b) in enumerate(zip(attention, mirrored, strict=True)) if a != b)
        raise InteropError(
            f"{where}: level {level} has attention on one path only (down_block_types "
            f"{down[level]}, up_block_types {up[len(up) - 1 - level]}); ddpmkit mirrors them"
        )
    base = channels[0]
    if any(ch % base for ch in channels):
        raise InteropError(
            f"{where}: block_out_channels={channels} are not multiples of the first level's "
            f"{base} (ddpmkit's levels are base_channels x channel_mults)"
        )
    time_dim = c["time_embedding_dim"]
    time_dim = None if time_dim in (None, 4 * base) else _int(time_dim, "time_embedding_dim")
    freq_shift = c["freq_shift"]
    if freq_shift not in (0, 1):
        raise refuse("freq_shift", "ddpmkit supports 0 and 1")
    if c["downsample_padding"] not in (0, 1):
        raise refuse("downsample_padding", "ddpmkit supports 0 (TensorFlow 'same') and 1")
    groups = c["norm_num_groups"]
    if groups is None:
        raise refuse("norm_num_groups", "ddpmkit needs an explicit GroupNorm group count")
    groups = _int(groups, "norm_num_groups")
    mid_attention = "full" if c["add_attention"] else "none"
    attn_groups = c["attn_norm_num_groups"]
    if mid_attention == "full":
        if attn_groups is None and shift == "scale_shift":
            raise refuse(
                "attn_norm_num_groups",
                "with scale_shift the middle attention then has no GroupNorm; ddpmkit's has one",
            )
        if attn_groups is not None and attn_groups != groups:
            raise refuse(
                "attn_norm_num_groups",
                f"ddpmkit's attention GroupNorm has norm_num_groups={groups}",
            )
    head_dim = c["attention_head_dim"]
    sites = [
        (f"level {i}", ch)
        for i, (k, ch) in enumerate(zip(attention, channels, strict=True))
        if k == "full"
    ]
    if mid_attention == "full":
        sites.append(("the middle block", channels[-1]))
    heads_per_site = {}
    for name, ch in sites:
        if head_dim is None:
            heads_per_site[name] = 1
            continue
        head_dim = _int(head_dim, "attention_head_dim")
        if head_dim < 1 or ch % head_dim:
            raise refuse("attention_head_dim", f"it does not divide the {ch} channels of {name}")
        heads_per_site[name] = ch // head_dim
    if len(set(heads_per_site.values())) > 1:
        listed = ", ".join(f"{h} at {name}" for name, h in heads_per_site.items())
        raise refuse(
            "attention_head_dim",
            f"it gives a different number of heads per level ({listed}); ddpmkit has one "
            "attention_heads for all levels",
        )
    in_ch, out_ch = _int(c["in_channels"], "in_channels"), _int(c["out_channels"], "out_channels")
    if out_ch not in (in_ch, 2 * in_ch):
        raise InteropError(
            f"{where}: out_channels={out_ch} is neither in_channels={in_ch} nor twice it "
            "(learned variance)"
        )
    size = c["sample_size"]
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or size[0] != size[1]:
            raise refuse("sample_size", "ddpmkit's data.image_size is square")
        size = size[0]
    if size is None:
        raise refuse("sample_size", "the image size is needed for data.image_size")
    size = _int(size, "sample_size")
    dropout = c["dropout"]
    try:
        config = UNetConfig(
            in_channels=in_ch,
            base_channels=base,
            channel_mults=tuple(ch // base for ch in channels),
            blocks_per_resolution=_int(c["layers_per_block"], "layers_per_block"),
            block_type="resnet",
            attention=attention,
            mid_attention=mid_attention,
            attention_heads=next(iter(heads_per_site.values()), 1),
            attention_head_dim=None,
            dropout=float(dropout) if isinstance(dropout, (int, float)) else dropout,
            norm_groups=groups,
            time_conditioning="scale_shift" if shift == "scale_shift" else "add",
            learned_variance=out_ch == 2 * in_ch,
            norm_eps=float(c["norm_eps"]),
            downsample_padding="same" if c["downsample_padding"] == 0 else "symmetric",
            time_flip_sin_to_cos=bool(c["flip_sin_to_cos"]),
            time_freq_shift=int(freq_shift),
            time_frequencies="diffusers",
            time_embed_dim=time_dim,
        )
    except (DdpmkitError, TypeError, ValueError) as err:
        raise InteropError(f"{where}: {' '.join(str(err).split())}") from None
    return Converted((config, size), notes)


# ---------------------------------------------------------------------- scheduler
def scheduler_to_diffusers(diffusion: DiffusionConfig, clip_x0: bool) -> dict[str, Any]:
    """``DDPMScheduler``'s scheduler_config.json for ``diffusion`` (and ``sample.clip_x0``)."""
    diffusion.validate()
    if diffusion.process == "edm":
        raise InteropError(EDM_EXPORT_REFUSAL)
    if diffusion.variance == "learned":
        raise VarianceInteropError(LEARNED_EXPORT_REFUSAL)
    steps = diffusion.num_steps
    start, end = _scaled_beta_range(steps)
    trained = None
    if diffusion.schedule == "sigmoid" or diffusion.schedule_shift != 1:  # no diffusers name
        schedule = make_schedule(diffusion.schedule, steps)
        trained = shifted_schedule(schedule, diffusion.schedule_shift).betas.tolist()
    return {
        "_class_name": SCHEDULER_CLASS,
        "_diffusers_version": DIFFUSERS_VERSION,
        "num_train_timesteps": steps,
        "beta_start": start,
        "beta_end": end,
        "beta_schedule": SCHEDULE_TO_DIFFUSERS[diffusion.schedule],
        "trained_betas": trained,
        "variance_type": diffusion.variance,
        "clip_sample": bool(clip_x0),
        "clip_sample_range": 1.0,
        "prediction_type": PREDICTION_TO_DIFFUSERS[diffusion.prediction],
        "thresholding": False,
        "dynamic_thresholding_ratio": 0.995,
        "sample_max_value": 1.0,
        "timestep_spacing": "leading",
        "steps_offset": 0,
        "rescale_betas_zero_snr": False,
    }


def _schedule_of_betas(betas: Any, steps: int) -> str:
    """The name of our schedule equal to ``betas`` (up to float32 rounding), or a refusal."""
    if not isinstance(betas, (list, tuple)) or not all(
        isinstance(b, (int, float)) and not isinstance(b, bool) for b in betas
    ):
        raise InteropError("cannot import this scheduler: trained_betas must be a list of numbers")
    if len(betas) != steps:
        raise InteropError(
            f"cannot import this scheduler: trained_betas has {len(betas)} values but "
            f"num_train_timesteps={steps}"
        )
    for name in SCHEDULE_NAMES:
        ours = make_schedule(name, steps).betas.tolist()
        if all(
            math.isclose(a, b, rel_tol=_TRAINED_BETAS_RTOL)
            for a, b in zip(betas, ours, strict=True)
        ):
            return name
    raise InteropError(
        "cannot import this scheduler: its trained_betas match none of ddpmkit's schedules "
        f"({', '.join(SCHEDULE_NAMES)} over {steps} steps), and runs name their schedule"
    )


def scheduler_from_diffusers(d: Mapping[str, Any]) -> Converted:
    """``Converted((DiffusionConfig, clip_x0))`` of a DDPMScheduler (or DDIMScheduler) config.

    The β schedule must be one of ddpmkit's (β_start/β_end of linear, scaled_linear and sigmoid
    are Ho et al.'s 1e-4/0.02 scaled by 1000/T); ``learned_range`` gets the hybrid loss of
    Nichol & Dhariwal, the fixed variances L_simple. ``variance_type="learned"`` is refused (see
    the module's docstring).
    """
    where = "cannot import this scheduler"
    cls = d.get("_class_name", SCHEDULER_CLASS)
    if cls not in (SCHEDULER_CLASS, "DDIMScheduler"):
        raise InteropError(f"{where}: it is a {cls}; DDPMScheduler and DDIMScheduler are read")
    notes = []
    c = {**SCHEDULER_DEFAULTS, **{k: v for k, v in d.items() if k in SCHEDULER_DEFAULTS}}
    if "variance_type" not in d and cls == "DDIMScheduler":
        notes.append("DDIMScheduler has no variance_type: ddpmkit uses fixed_small")
    unknown = sorted(k for k in d if not k.startswith("_") and k not in SCHEDULER_DEFAULTS)
    if unknown:
        notes.append(f"ignored scheduler settings unknown to ddpmkit: {', '.join(unknown)}")
    steps = _int(c["num_train_timesteps"], "num_train_timesteps")
    if steps < 1:
        raise InteropError(f"{where}: num_train_timesteps={steps} must be >= 1")
    if c["rescale_betas_zero_snr"]:
        raise InteropError(f"{where}: rescale_betas_zero_snr=true (ddpmkit has no such schedule)")
    if c["thresholding"]:
        raise InteropError(f"{where}: thresholding=true (ddpmkit clips x0 to [-1, 1] only)")
    if c["clip_sample"] and c["clip_sample_range"] != 1.0:
        raise InteropError(
            f"{where}: clip_sample_range={c['clip_sample_range']!r} (ddpmkit clips x0 to [-1, 1])"
        )
    if c["trained_betas"] is not None:
        schedule = _schedule_of_betas(c["trained_betas"], steps)
    else:
        beta_schedule = c["beta_schedule"]
        by_name = {v: k for k, v in SCHEDULE_TO_DIFFUSERS.items()}
        if beta_schedule not in by_name:
            raise InteropError(
                f"{where}: beta_schedule={beta_schedule!r} (ddpmkit has {', '.join(by_name)})"
            )
        schedule = by_name[beta_schedule]
        if schedule != "cosine":
            start, end = _scaled_beta_range(steps)
            given = (c["beta_start"], c["beta_end"])
            if not all(
                isinstance(g, (int, float)) and math.isclose(g, e, rel_tol=1e-9)
                for g, e in zip(given, (start, end), strict=True)
            ):
                raise InteropError(
                    f"{where}: beta_start={given[0]!r}, beta_end={given[1]!r} differ from "
                    f"ddpmkit's {schedule} schedule over {steps} steps ({start:g}, {end:g}: "
                    "Ho et al.'s 1e-4 and 0.02 scaled by 1000/T)"
                )
    prediction = PREDICTION_FROM_DIFFUSERS.get(c["prediction_type"])
    if prediction is None:
        raise InteropError(
            f"{where}: prediction_type={c['prediction_type']!r} (ddpmkit has "
            f"{', '.join(PREDICTION_FROM_DIFFUSERS)})"
        )
    if c["variance_type"] == "learned":
        raise VarianceInteropError(LEARNED_IMPORT_REFUSAL)
    if c["variance_type"] == "fixed_large_log":
        notes.append(
            "variance_type='fixed_large_log' imported as fixed_large (σ² = β_t, GLIDE's max_log): "
            "diffusers' DDPMScheduler.step takes the square root of log β_t there, giving NaN"
        )
    variance = VARIANCE_FROM_DIFFUSERS.get(c["variance_type"])
    if variance is None:
        raise InteropError(
            f"{where}: variance_type={c['variance_type']!r} (ddpmkit has "
            f"{', '.join(VARIANCE_FROM_DIFFUSERS)})"
        )
    ignored = sorted(k for k in SAMPLING_ONLY_KEYS if k in d and d[k] != SCHEDULER_DEFAULTS[k])
    if ignored:
        notes.append(f"ignored sampling-time scheduler settings: {', '.join(ignored)}")
    config = DiffusionConfig(
        schedule=schedule,
        num_steps=steps,
        prediction=prediction,
        variance=variance,
        loss="hybrid" if variance in LEARNED_VARIANCES else "l2",
    )
    config.validate()
    return Converted((config, bool(c["clip_sample"])), notes)
