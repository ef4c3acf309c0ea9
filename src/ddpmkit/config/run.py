"""One config object describes a run: data, model, diffusion, training and sampling.

Configs come from TOML files (``configs/*.toml``), from ``section.key=value`` overrides on the
command line (a bare ``key=value`` works where the key names one field only), and from the
``config.json`` saved in every run directory. Every value is checked against its field's type;
every mistake (unreadable file, invalid TOML/JSON or UTF-8, unknown key, wrong type, huge or
non-finite number) is one :class:`ConfigError` of one line.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ddpmkit.config.data import DataConfig
from ddpmkit.config.diffusion import DiffusionConfig, values_implied_by
from ddpmkit.config.messages import check_choice, clean, show
from ddpmkit.config.model import UNetConfig
from ddpmkit.errors import ConfigError

_T = TypeVar("_T")

TRACKERS = ("none", "tensorboard", "wandb", "mlflow")
TIMESTEP_SAMPLERS = ("uniform", "stratified", "loss_second_moment")
LR_SCHEDULES = ("constant", "cosine", "linear")
OPTIMIZERS = ("adamw", "muon")
AMP_DTYPES = ("auto", "bf16", "fp16")
MAX_CONFIG_BYTES = 1 << 20
"""Config files larger than this (1 MiB) are refused unread."""
_INT_LIMIT = 2**63 - 1  # integers must fit in int64 (torch, numpy and JSON readers elsewhere)


EMA_KINDS = ("exponential", "power")
MAX_EMA_STD = 0.28  # σ_rel of a power profile peaks near 0.3 (at γ ≈ −0.5)


@dataclass
class TrainConfig:
    """The optimisation loop (Ho et al. 2020, Appendix B, for the paper's values)."""

    steps: int = 3000
    batch_size: int = 128
    lr: float = 2e-3
    lr_schedule: str = "cosine"  # after warm-up: "constant" (Ho et al.), cosine or linear to 0
    warmup_steps: int = 50
    weight_decay: float = 0.0
    optimizer: str = "adamw"  # or "muon": Muon on the hidden matrices, AdamW on the rest
    muon_momentum: float = 0.95  # Muon's Nesterov momentum μ
    muon_split: bool = False  # Muon: stacked q/k/v and scale/shift rows as separate matrices
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    grad_clip: float = 1.0  # max global gradient norm; 0 disables
    grad_accum: int = 1  # micro-batches per optimizer step (batch_size is split among them)
    timestep_sampler: str = "uniform"  # "stratified": one t per 1/B of [0, T); "loss_second_moment"
    ema_decay: float = 0.99
    ema_warmup: bool = True  # decay_k = min(decay, (1 + k)/(10 + k)) so early averages forget fast
    ema: str = "exponential"  # or "power": Karras et al. (2024)'s power-function profile
    ema_std: float = 0.1  # power EMA: the profile's relative standard deviation σ_rel
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:1" | "mps"
    amp: bool = True  # mixed precision: see amp_dtype
    amp_dtype: str = "auto"  # auto: bf16 where native, else fp16 + GradScaler on CUDA | bf16 | fp16
    channels_last: bool = False  # NHWC memory format for the model and the batches
    compile: bool = False  # torch.compile the training model (inductor)
    cpu_fused_adam: bool = True  # AdamW as one fused kernel on the CPU too (CUDA always fuses)
    log_every: int = 50
    sample_every: int = 1000  # 0: only at the end
    checkpoint_every: int = 1000  # 0: only at the end
    keep_checkpoints: int = 3  # checkpoint directories kept (the newest ones)
    max_bad_steps: int = 10  # stop after this many non-finite steps in a row
    conditional: bool = False  # class-conditional on the data's labels (classifier-free)
    label_dropout: float = 0.1  # share of labels replaced by the null class when conditional
    tracker: str = "none"  # none | tensorboard | wandb | mlflow (see ddpmkit.trackers)
    tracker_project: str = "ddpmkit"  # wandb project / MLflow experiment
    tracker_uri: str = ""  # MLflow tracking URI (default: $MLFLOW_TRACKING_URI or RUN_DIR/mlruns)
    time_limit_min: float = 0.0  # > 0: stop after this many minutes; the cosine decay follows time

    def validate(self) -> None:
        positive = (
            "steps",
            "batch_size",
            "grad_accum",
            "log_every",
            "keep_checkpoints",
            "max_bad_steps",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "sample_every", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")
        if not self.time_limit_min >= 0:
            raise ConfigError(f"train.time_limit_min must be >= 0, got {self.time_limit_min}")
        if not 0.0 <= self.label_dropout < 1.0:
            raise ConfigError(f"train.label_dropout must lie in [0, 1), got {self.label_dropout}")
        check_choice("train.tracker", self.tracker, TRACKERS)
        check_choice("train.amp_dtype", self.amp_dtype, AMP_DTYPES)
        check_choice("train.lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_choice("train.optimizer", self.optimizer, OPTIMIZERS)
        if not 0 <= self.muon_momentum < 1:
            raise ConfigError(f"train.muon_momentum must lie in [0, 1), got {self.muon_momentum}")
        if self.muon_split and self.optimizer != "muon":
            raise ConfigError(
                f"train.muon_split splits Muon's matrices; train.optimizer is '{self.optimizer}' "
                "(set train.optimizer=muon, or leave muon_split off)"
            )
        check_choice("train.timestep_sampler", self.timestep_sampler, TIMESTEP_SAMPLERS)
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"train.ema_decay must lie in [0, 1), got {self.ema_decay}")
        check_choice("train.ema", self.ema, EMA_KINDS)
        if not 0 < self.ema_std <= MAX_EMA_STD:
            raise ConfigError(
                f"train.ema_std must lie in (0, {MAX_EMA_STD}] (the power profile's relative "
                f"width), got {self.ema_std}"
            )
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must lie in [0, 1)")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise ConfigError("train.grad_clip and train.weight_decay must be >= 0")
        if self.batch_size % self.grad_accum:
            raise ConfigError(
                f"train.batch_size ({self.batch_size}) must be a multiple of train.grad_accum "
                f"({self.grad_accum})"
            )


@dataclass
class SampleConfig:
    """The sample grids written during and after training."""

    num_samples: int = 64
    sampler: str = "ddim"  # 100 DDIM steps: as good as 1000 ancestral ones on digits, 10x faster
    # capped at T; None: the sampler's own (all T for ddpm, 50 ddim, 20 dpm++, 18 heun)
    steps: int | None = 100
    eta: float = 0.0
    clip_x0: bool = True

    def validate(self) -> None:
        from ddpmkit.sampling import SAMPLERS  # on use: the config module stays light

        check_choice("sample.sampler", self.sampler, SAMPLERS)
        if self.num_samples < 1:
            raise ConfigError("sample.num_samples must be >= 1")
        if self.steps is not None and self.steps < 1:
            raise ConfigError("sample.steps must be >= 1 (or none for the sampler's default)")


def recipe_model() -> UNetConfig:
    """The default recipe's network: :class:`UNetConfig`'s at half its width (16 base
    channels), without self-attention (0.28M parameters): 1.5-2x the steps per second of the
    full width on a CPU, and 1.2x again without attention, at no loss per step on the digits."""
    return UNetConfig(base_channels=16, attention=("none", "none", "none"), mid_attention="none")


def recipe_diffusion() -> DiffusionConfig:
    """The default recipe's process: the cosine schedule (Nichol & Dhariwal 2021, eq. 17),
    the v target (Salimans & Ho 2022) and the P2 weighting (Choi et al. 2022) on the classic
    1000 steps; :class:`DiffusionConfig` itself keeps Ho et al.'s linear schedule and ε."""
    return DiffusionConfig(schedule="cosine", prediction="v", loss_weight="p2")


@dataclass
class RunConfig:
    """A run: the default recipe trains on the digits (BENCHMARKS.md, "A faster recipe": every
    choice in it won on 3-seed medians at 60 s and at 300 s of training)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: UNetConfig = field(default_factory=recipe_model)
    diffusion: DiffusionConfig = field(default_factory=recipe_diffusion)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def validate(self) -> None:
        for section in SECTIONS:
            getattr(self, section).validate()
        if self.model.in_channels != self.data.channels:
            raise ConfigError(
                f"model.in_channels ({self.model.in_channels}) must equal data.channels "
                f"({self.data.channels})"
            )
        if self.model.learned_variance != self.diffusion.learned_variance:
            given = str(self.model.learned_variance).lower()
            needed = str(self.diffusion.learned_variance).lower()
            raise ConfigError(
                f"model.learned_variance={given} contradicts diffusion.variance="
                f"{self.diffusion.variance} (which needs {needed}); leave "
                "model.learned_variance out: it follows diffusion.variance"
            )
        multiple = self.model.size_multiple
        if self.data.image_size % multiple:
            raise ConfigError(
                f"data.image_size {self.data.image_size} does not fit "
                f"{self.model.fit_description()}: it must be a multiple of {multiple}"
            )
        if self.diffusion.process == "edm" and self.train.timestep_sampler != "uniform":
            raise ConfigError(
                "diffusion.process=edm draws σ from its log-normal: train.timestep_sampler "
                "applies to ddpm runs only"
            )

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {
            section: {
                k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(getattr(self, section)).items()
            }
            for section in SECTIONS
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": UNetConfig,
    "diffusion": DiffusionConfig,
    "train": TrainConfig,
    "sample": SampleConfig,
}


# ---------------------------------------------------------------------- type coercion
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _checked_int(value: int, where: str) -> int:
    if abs(value) > _INT_LIMIT:
        raise ConfigError(f"{where} is too large: integers must lie within ±(2**63 - 1)")
    return value


def _text_list(text: str, where: str) -> list[str]:
    """A list written on the command line: ``1,2,2``, or in brackets as in a config file
    (``[1, 2, 2]``, ``["none", "full"]``, ``[none, full]``); items stay text for _coerce."""
    text = text.strip()
    if text.startswith("[") or text.endswith("]"):
        if not (text.startswith("[") and text.endswith("]")):
            raise ConfigError(f"{where} must be a list like [1, 2] or 1,2, got {show(text)}")
        text = text[1:-1]
    return [_unquoted(v.strip()) for v in text.split(",") if v.strip()]


def _unquoted(item: str) -> str:
    """``"none"`` or ``'none'`` → ``none``; a quote without its partner stays (and fails)."""
    if len(item) >= 2 and item[0] == item[-1] and item[0] in "'\"":
        return item[1:-1]
    return item


def _coerce(value: Any, tp: Any, where: str, from_text: bool) -> Any:
    """``value`` converted to the annotated type ``tp`` or a ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if type(None) in options and (
            value is None or (from_text and str(value).lower() in ("none", "null", ""))
        ):
            return None
        inner = [o for o in options if o is not type(None)]
        return _coerce(value, inner[0], where, from_text)
    if origin is tuple:
        item_type = typing.get_args(tp)[0]
        if from_text and isinstance(value, str):
            value = _text_list(value, where)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {show(value)}")
        return tuple(_coerce(v, item_type, where, from_text) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if from_text and str(value).lower() in ("true", "yes", "1", "on"):
            return True
        if from_text and str(value).lower() in ("false", "no", "0", "off"):
            return False
        raise ConfigError(f"{where} must be true or false, got {show(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return _checked_int(value, where)
        if from_text:
            try:
                number = int(str(value).replace("_", ""))
            except ValueError:  # not a number, or more digits than Python converts
                pass
            else:
                return _checked_int(number, where)
        raise ConfigError(f"{where} must be an integer, got {show(value)}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an integer beyond float's range
                pass
        elif from_text:
            try:
                number = float(value)
            except (ValueError, OverflowError):
                pass
        if number is not None and math.isfinite(number):
            return number
        raise ConfigError(f"{where} must be a finite number, got {show(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where} must be a string, got {show(value)}")
    raise AssertionError(f"unsupported config type {_type_name(tp)} at {where}")


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _checked(what: str, build: Callable[[], _T]) -> _T:
    """``build()`` with a stray ValueError/TypeError of a section's checks made a ConfigError."""
    try:
        return build()
    except ConfigError as err:
        message = str(err)
        if message.isprintable():
            raise
        raise ConfigError(" ".join(message.split())) from None  # a value held a line break
    except (ValueError, TypeError, ArithmeticError) as err:
        raise ConfigError(f"invalid {what}: {' '.join(str(err).split())}") from None


KEY_LIST_CHARS = 300
"""How much of one error line the keys of a section may take (the line stays readable)."""


def _unknown_key(section: str, key: Any, names: set[str]) -> ConfigError:
    """One line: the close matches of a misspelt key, else the keys of its section — all of
    them where they fit in :data:`KEY_LIST_CHARS`, else the nearest to what was typed first,
    with the count of the rest."""
    close = difflib.get_close_matches(str(key), sorted(names), n=3)
    if close:
        hint = "did you mean " + " or ".join(f"'{section}.{k}'" for k in close) + "?"
    elif len(" ".join(names)) <= KEY_LIST_CHARS:
        hint = f"the keys of [{section}] are " + " ".join(sorted(names))
    else:
        nearest = sorted(
            names, key=lambda k: (-difflib.SequenceMatcher(None, str(key), k).ratio(), k)
        )
        shown: list[str] = []
        for name in nearest:
            if len(" ".join([*shown, name])) > KEY_LIST_CHARS:
                break
            shown.append(name)
        rest = len(names) - len(shown)
        hint = (
            f"[{section}] has {len(names)} keys; nearest first: {' '.join(shown)} and {rest} more"
        )
    return ConfigError(f"unknown key '{section}.{clean(key)}': {hint}")


def _build_section(name: str, values: dict[str, Any], from_text: bool = False) -> Any:
    cls = SECTIONS[name]
    types_by_field = _field_types(cls)
    init_fields = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in values.items():
        if key not in init_fields:
            raise _unknown_key(name, key, init_fields)
        kwargs[key] = _coerce(value, types_by_field[key], f"{name}.{key}", from_text)
    if cls is DiffusionConfig:
        kwargs = {**values_implied_by(kwargs), **kwargs}
    # start from the run's default section (the digits recipe), not the section class's defaults
    return _checked(
        f"[{name}] config", lambda: dataclasses.replace(getattr(RunConfig(), name), **kwargs)
    )


def _migrate(d: dict[str, Any]) -> dict[str, Any]:
    """Keys of earlier releases: ``train.tensorboard = true`` means ``train.tracker =
    "tensorboard"``."""
    train = d.get("train")
    if not isinstance(train, dict) or "tensorboard" not in train:
        return d
    train = dict(train)
    flag = train.pop("tensorboard")
    if flag is True or str(flag).strip().lower() in ("true", "1", "yes"):
        train.setdefault("tracker", "tensorboard")
    return {**d, "train": train}


RAN_BEFORE_THEY_EXISTED: dict[str, dict[str, Any]] = {"train": {"cpu_fused_adam": False}}
"""Fields added after runs were saved, with the value that a saved config lacking them ran with
(where the class default alone would not say it)."""


def completed_saved_config(d: Any) -> Any:
    """A config that a run saved (its config.json, an export's ddpmkit.json) with the fields it
    lacks filled in as they ran then. A saved config names every field of its release; a field
    it lacks came later, and ran as its section class's own default, not as today's recipe:
    ``diffusion.loss_weight`` (added before the default recipe moved to P2) is ``none`` in runs
    saved without it. Filled: the fields where the recipe departs from its class, and those of
    :data:`RAN_BEFORE_THEY_EXISTED` (``train.cpu_fused_adam``: false)."""
    if not isinstance(d, dict):
        return d
    completed = dict(d)
    recipe = RunConfig()
    for name, cls in SECTIONS.items():
        section = d.get(name, {})
        if not isinstance(section, dict):
            continue
        classic = dataclasses.asdict(cls())
        ours = dataclasses.asdict(getattr(recipe, name))
        missing = {k: v for k, v in classic.items() if k not in section and ours[k] != v}
        missing |= {
            k: v for k, v in RAN_BEFORE_THEY_EXISTED.get(name, {}).items() if k not in section
        }
        if missing:
            completed[name] = {**section, **missing}
    return completed


def config_from_dict(d: dict[str, Any]) -> RunConfig:
    """A validated RunConfig from nested sections (missing keys keep their defaults)."""
    if not isinstance(d, dict):
        raise ConfigError(f"a config must be a table of sections, got {show(d)}")
    unknown = sorted(map(str, set(d) - set(SECTIONS)))
    if unknown:
        raise ConfigError(
            f"unknown config section '{clean(unknown[0])}': valid sections are "
            + ", ".join(SECTIONS)
        )
    d = _migrate(d)
    sections = {}
    for name in SECTIONS:
        values = d.get(name, {})
        if not isinstance(values, dict):
            raise ConfigError(f"config section '{name}' must be a table of key = value pairs")
        sections[name] = _build_section(name, values)
    config = RunConfig(**sections)
    # the network's input channels are the data's and its output channels follow from the
    # variance choice: derived unless given (then checked by validate)
    derived = {
        "in_channels": config.data.channels,
        "learned_variance": config.diffusion.learned_variance,
    }
    given = d.get("model", {})
    config.model = dataclasses.replace(
        config.model, **{key: value for key, value in derived.items() if key not in given}
    )
    _checked("config", config.validate)
    return config


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The nested dict of a TOML or JSON config file (``.json``: JSON, anything else: TOML)."""
    path = Path(path)
    try:
        if path.is_dir():
            raise ConfigError(f"config file '{path}' is a folder: give a .toml or .json file")
        if not path.is_file():
            raise ConfigError(f"config file '{path}' not found")
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"config file '{path}' is {size} bytes: config files are at most "
                f"{MAX_CONFIG_BYTES} bytes"
            )
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read config file '{path}': {err.strerror or err}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"config file '{path}' is not valid UTF-8 text (byte {err.start})"
        ) from None
    try:
        loaded = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except RecursionError:
        raise ConfigError(f"cannot parse config file '{path}': nested too deeply") from None
    except ValueError as err:  # TOMLDecodeError, JSONDecodeError, an integer of 5000 digits
        message = " ".join(str(err).split())
        raise ConfigError(f"cannot parse config file '{path}': {message}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"config file '{path}' must hold a table of sections, got {type(loaded).__name__}"
        )
    return loaded


def _resolve_key(key: str) -> tuple[str, str]:
    if "." in key:
        section, name = key.split(".", 1)
        if section not in SECTIONS:
            raise ConfigError(
                f"unknown config section '{clean(section)}' in '{clean(key)}': "
                "valid sections are " + ", ".join(SECTIONS)
            )
        names = {f.name for f in dataclasses.fields(SECTIONS[section])}
        if name not in names:
            raise _unknown_key(section, name, names)
        return section, name
    matches = [s for s, cls in SECTIONS.items() if key in {f.name for f in dataclasses.fields(cls)}]
    if not matches:
        raise ConfigError(
            f"unknown config key '{clean(key)}' (write section.key, e.g. train.steps=100)"
        )
    if len(matches) > 1:
        raise ConfigError(
            f"config key '{key}' is ambiguous: write one of "
            + ", ".join(f"{s}.{key}" for s in matches)
        )
    return matches[0], key


def apply_overrides(d: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``d`` with ``section.key=value`` (or unique ``key=value``) strings applied; values are
    parsed as text for the field's type (lists comma-separated: ``model.channel_mults=1,2,2``)."""
    if not isinstance(d, dict):
        raise ConfigError(f"a config must be a table of sections, got {show(d)}")
    result = {k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(
                f"override '{clean(item)}' must look like key=value (e.g. train.steps=100)"
            )
        key, value = item.split("=", 1)
        section, name = _resolve_key(key.strip())
        tp = _field_types(SECTIONS[section])[name]
        values = result.setdefault(section, {})
        if not isinstance(values, dict):
            raise ConfigError(f"config section '{section}' must be a table of key = value pairs")
        values[name] = _coerce(value.strip(), tp, f"{section}.{name}", True)
    return result


def resolve_config(
    file: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> RunConfig:
    """Defaults ← ``base`` (e.g. a saved run) ← config file ← overrides, validated."""
    d: dict[str, Any] = base if base is not None else {}
    if not isinstance(d, dict):
        raise ConfigError(f"a config must be a table of sections, got {show(d)}")
    if file is not None:
        loaded = load_config_file(file)
        d = dict(d)
        for key, value in loaded.items():
            old = d.get(key)
            d[key] = (
                {**old, **value} if isinstance(old, dict) and isinstance(value, dict) else value
            )
    d = apply_overrides(d, overrides or [])
    return config_from_dict(d)
