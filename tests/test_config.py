"""RunConfig: TOML/JSON files, key=value overrides, type checking, validation, JSON round trip."""

from __future__ import annotations

import json

import pytest

from ddpmkit.config import (
    RunConfig,
    apply_overrides,
    config_from_dict,
    load_config_file,
    resolve_config,
)
from ddpmkit.errors import ConfigError, DdpmkitError

SMALL_MODEL = ["model.channel_mults=1,2", "model.attention=none,none"]


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------- files
def test_toml_file_sets_values_with_their_types(tmp_path):
    path = write(
        tmp_path / "run.toml",
        """
        [data]
        image_size = 32
        channels = 3
        random_flip = true

        [model]
        in_channels = 3
        channel_mults = [1, 2, 2, 2]
        attention = ["none", "none", "full", "none"]
        dropout = 0          # an integer where a float is expected is fine

        [train]
        steps = 123
        lr = 1e-3

        [sample]
        steps = 25
        """,
    )
    config = resolve_config(path)
    assert config.data.image_size == 32 and config.data.random_flip is True
    assert config.model.channel_mults == (1, 2, 2, 2)
    assert config.model.attention == ("none", "none", "full", "none")
    assert config.model.dropout == 0.0 and isinstance(config.model.dropout, float)
    assert config.train.steps == 123 and config.train.lr == 1e-3
    assert config.sample.steps == 25
    # untouched fields keep their defaults
    assert config.train.batch_size == RunConfig().train.batch_size
    assert config.diffusion == RunConfig().diffusion


def test_overrides_win_over_the_file_and_the_file_over_the_base(tmp_path):
    path = write(tmp_path / "run.toml", "[train]\nsteps = 50\nlr = 0.5\n")
    base = {"train": {"steps": 7, "seed": 3, "lr": 0.25}}
    config = resolve_config(path, ["train.steps=99"], base=base)
    assert config.train.steps == 99  # override > file
    assert config.train.lr == 0.5  # file > base
    assert config.train.seed == 3  # base > defaults
    assert base == {"train": {"steps": 7, "seed": 3, "lr": 0.25}}  # the base is not modified


def test_json_config_file(tmp_path):
    path = write(tmp_path / "run.json", json.dumps({"train": {"steps": 11}}))
    assert resolve_config(path).train.steps == 11


def test_missing_and_unparseable_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config_file(tmp_path / "nope.toml")
    bad = write(tmp_path / "bad.toml", "[train\nsteps = 1\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config_file(bad)


def test_unknown_section_and_key_in_a_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown config section 'trian'"):
        resolve_config(write(tmp_path / "a.toml", "[trian]\nsteps = 1\n"))
    with pytest.raises(ConfigError, match="unknown key 'train.stepz'"):
        resolve_config(write(tmp_path / "b.toml", "[train]\nstepz = 1\n"))
    # a key outside of any [section]
    with pytest.raises(ConfigError, match="unknown config section 'steps'"):
        resolve_config(write(tmp_path / "c.toml", "steps = 5\n[train]\nlr = 1e-3\n"))


def test_file_values_are_type_checked(tmp_path):
    with pytest.raises(ConfigError, match="train.steps must be an integer, got 3.5"):
        resolve_config(write(tmp_path / "a.toml", "[train]\nsteps = 3.5\n"))
    with pytest.raises(ConfigError, match="train.amp must be true or false"):
        resolve_config(write(tmp_path / "b.toml", '[train]\namp = "yes"\n'))
    with pytest.raises(ConfigError, match="model.channel_mults must be a list"):
        resolve_config(write(tmp_path / "c.toml", "[model]\nchannel_mults = 2\n"))


# ---------------------------------------------------------------------- overrides
def test_section_key_override():
    config = resolve_config(overrides=["train.steps=10", "diffusion.schedule=cosine"])
    assert config.train.steps == 10 and config.diffusion.schedule == "cosine"


@pytest.mark.parametrize(
    ("override", "section", "key", "value"),
    [
        ("lr=1e-3", "train", "lr", 1e-3),
        ("seed=7", "train", "seed", 7),
        ("schedule=cosine", "diffusion", "schedule", "cosine"),
        ("eta=0.5", "sample", "eta", 0.5),
        ("num_samples=9", "sample", "num_samples", 9),
    ],
)
def test_bare_unique_key(override, section, key, value):
    config = resolve_config(overrides=[override])
    assert getattr(getattr(config, section), key) == value


def test_ambiguous_bare_key_names_the_candidates():
    with pytest.raises(ConfigError) as info:
        resolve_config(overrides=["steps=100"])
    message = str(info.value)
    assert "ambiguous" in message
    assert "train.steps" in message and "sample.steps" in message


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.steps=abc", "train.steps must be an integer, got 'abc'"),
        ("train.steps=1.5", "train.steps must be an integer"),
        ("train.amp=maybe", "train.amp must be true or false, got 'maybe'"),
        ("train.lr=fast", "train.lr must be a finite number, got 'fast'"),
        ("train.lr=inf", "train.lr must be a finite number"),
        ("train.lr=nan", "train.lr must be a finite number"),
        ("model.channel_mults=1,x", "model.channel_mults must be an integer, got 'x'"),
        ("sample.steps=many", "sample.steps must be an integer"),
        ("train.stepz=1", "unknown key 'train.stepz'"),
        ("trian.steps=1", "unknown config section 'trian'"),
        ("bogus=1", "unknown config key 'bogus'"),
        ("train.steps", "must look like key=value"),
    ],
)
def test_bad_override_is_a_config_error_naming_the_key(override, expected):
    """Wrong types, unknown keys and sections, and malformed overrides."""
    with pytest.raises(ConfigError) as info:
        resolve_config(overrides=[override])
    assert expected in str(info.value)


@pytest.mark.parametrize(
    ("text", "value"),
    [("true", True), ("yes", True), ("1", True), ("On", True)]
    + [("false", False), ("no", False), ("0", False), ("OFF", False)],
)
def test_boolean_spellings(text, value):
    assert resolve_config(overrides=[f"train.amp={text}"]).train.amp is value


def test_an_unknown_key_names_its_close_matches_else_every_valid_key():
    with pytest.raises(ConfigError) as info:
        resolve_config(overrides=["train.stepz=1"])
    assert str(info.value) == "unknown key 'train.stepz': did you mean 'train.steps'?"
    with pytest.raises(ConfigError) as info:
        resolve_config(overrides=["train.zzzz=1"])
    assert "steps" in str(info.value) and "batch_size" in str(info.value)


def test_tuple_parsing():
    config = resolve_config(
        overrides=["model.channel_mults=1,2,2", "model.attention=none, none ,full"]
    )
    assert config.model.channel_mults == (1, 2, 2)
    assert config.model.attention == ("none", "none", "full")
    config = resolve_config(
        overrides=["model.channel_mults=1,2,2,4", "data.image_size=16"]
        + ["model.attention=none,none,none,full"]
    )
    assert config.model.channel_mults == (1, 2, 2, 4)


def test_optional_none():
    assert resolve_config(overrides=["sample.steps=25"]).sample.steps == 25
    assert resolve_config(overrides=["sample.steps=25", "sample.steps=none"]).sample.steps is None
    model = resolve_config(overrides=["model.attention_head_dim=null"]).model
    assert model.attention_head_dim is None
    model = resolve_config(overrides=["model.attention_head_dim=16"]).model
    assert model.attention_head_dim == 16


def test_later_override_wins():
    assert resolve_config(overrides=["train.steps=1", "train.steps=2"]).train.steps == 2


def test_apply_overrides_does_not_modify_its_input():
    d = {"train": {"steps": 5}}
    result = apply_overrides(d, ["train.steps=6", "sample.eta=0.5"])
    assert d == {"train": {"steps": 5}}
    assert result == {"train": {"steps": 6}, "sample": {"eta": 0.5}}


# ---------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.steps=0", "train.steps must be >= 1"),
        ("train.lr=-1", "train.lr must be > 0"),
        ("train.lr_schedule=step", "unknown train.lr_schedule 'step'"),
        ("train.ema_decay=1", "train.ema_decay must lie in [0, 1)"),
        ("train.batch_size=16 train.grad_accum=3", "must be a multiple of train.grad_accum"),
        ("train.warmup_steps=-1", "train.warmup_steps must be >= 0"),
        ("sample.sampler=euler", "unknown sample.sampler 'euler'"),
        ("sample.num_samples=0", "sample.num_samples must be >= 1"),
        ("sample.steps=0", "sample.steps must be >= 1"),
        ("diffusion.schedule=exp", "unknown diffusion.schedule 'exp'"),
        ("data.channels=2", "channels must be 1 (grayscale) or 3 (RGB)"),
    ],
)
def test_out_of_range_values(override, expected):
    with pytest.raises(ConfigError) as info:
        resolve_config(overrides=override.split())
    assert expected in str(info.value)


def test_in_channels_must_match_data_channels():
    with pytest.raises(ConfigError) as info:
        resolve_config(overrides=["data.channels=3", "model.in_channels=1"])
    assert "model.in_channels (1) must equal data.channels (3)" in str(info.value)
    with pytest.raises(ConfigError) as info:
        resolve_config(overrides=["data.channels=1", "model.in_channels=3"])
    assert "model.in_channels (3) must equal data.channels (1)" in str(info.value)
    config = resolve_config(overrides=["data.channels=3", "model.in_channels=3"])
    assert config.data.channels == config.model.in_channels == 3


def test_image_size_must_fit_the_unet_depth():
    # three levels: two downsamplings, so a multiple of 4
    three = ["model.channel_mults=1,2,2", "model.attention=none,none,none"]
    with pytest.raises(ConfigError) as info:
        resolve_config(overrides=["data.image_size=10", *three])
    message = str(info.value)
    assert "data.image_size 10" in message and "multiple of 4" in message
    # two levels: a multiple of 2 is enough
    assert resolve_config(overrides=["data.image_size=12", *three]).data.image_size == 12
    assert resolve_config(overrides=["data.image_size=10", *SMALL_MODEL]).data.image_size == 10
    with pytest.raises(ConfigError, match="multiple of 2"):
        resolve_config(overrides=["data.image_size=9", *SMALL_MODEL])
    # on 2x2 patches every level halves a size that the patching has already halved
    patched = [*three, "model.patch_size=2"]
    with pytest.raises(ConfigError) as info:
        resolve_config(overrides=["data.image_size=28", *patched])
    message = str(info.value)
    assert "on 2x2 patches" in message and "multiple of 8" in message
    assert resolve_config(overrides=["data.image_size=24", *patched]).model.patch_size == 2


def test_user_errors_are_ddpmkit_errors():
    with pytest.raises(DdpmkitError):
        resolve_config(overrides=["train.steps=abc"])
    assert issubclass(ConfigError, ValueError)


# ---------------------------------------------------------------------- JSON round trip
def test_to_json_round_trips_through_config_from_dict():
    config = resolve_config(
        overrides=[
            "data.source=./somewhere/images",
            "data.image_size=32",
            "model.channel_mults=1,2,2,2",
            "model.attention=none,linear,full,none",
            "model.attention_head_dim=16",
            "model.dropout=0.1",
            "diffusion.schedule=cosine",
            "diffusion.prediction=v",
            "train.steps=77",
            "train.lr=3e-4",
            "train.amp=true",
            "sample.steps=none",
            "sample.sampler=ddim",
            "sample.eta=0.25",
        ]
    )
    text = config.to_json()
    data = json.loads(text)
    assert data["model"]["channel_mults"] == [1, 2, 2, 2]  # plain JSON lists
    again = config_from_dict(data)
    assert again == config
    assert again.to_json() == text
    assert config_from_dict(json.loads(RunConfig().to_json())) == RunConfig()


def test_config_from_dict_is_strict_about_json_types():
    with pytest.raises(ConfigError, match="train.steps must be an integer, got '5'"):
        config_from_dict({"train": {"steps": "5"}})
    with pytest.raises(ConfigError, match="train.steps must be an integer, got True"):
        config_from_dict({"train": {"steps": True}})
    with pytest.raises(ConfigError, match="must be a table"):
        config_from_dict({"train": 5})
    with pytest.raises(ConfigError, match="unknown config section 'extra'"):
        config_from_dict({"extra": {}})


def test_shipped_digits_config_is_the_default_recipe():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    assert resolve_config(root / "configs" / "digits.toml") == RunConfig()


RECIPE_CHOICES = {
    "model": ("base_channels", "attention", "mid_attention"),
    "diffusion": ("schedule", "prediction", "loss", "loss_weight"),
    "train": ("steps", "batch_size", "warmup_steps", "ema_decay"),
}


def test_shipped_configs_spell_out_what_a_default_change_could_move():
    """Every config in configs/ writes the recipe choices the default recipe has moved before
    (issue 16 moved width, attention, schedule, target, weighting, batch, warm-up and EMA), so
    the next default change cannot reach into a published recipe; the paper recipes weight
    nothing."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "configs"
    files = sorted(root.rglob("*.toml"))
    assert len(files) >= 15
    for file in files:
        table = tomllib.loads(file.read_text(encoding="utf-8"))
        for section, keys in RECIPE_CHOICES.items():
            missing = [k for k in keys if k not in table.get(section, {})]
            assert not missing, f"{file.name} leaves {section}.{missing} to the defaults"
    for name in ("cifar10_ddpm", "fashion_mnist", "flowers64", "pets64", "tinyimagenet64"):
        assert resolve_config(root / f"{name}.toml").diffusion.loss_weight == "none"


def _train_keys_off_the_default(config: RunConfig) -> set[str]:
    """The [train] keys where a shipped config differs from ``RunConfig()``."""
    import dataclasses

    train, default = dataclasses.asdict(config.train), dataclasses.asdict(RunConfig().train)
    return {k for k, v in default.items() if train[k] != v}


def test_fashion_mnist_cpu_config_is_the_default_recipe_on_a_time_budget():
    """configs/fashion_mnist_cpu.toml is the default recipe as measured on Fashion-MNIST at
    28×28 with a 10-minute budget (BENCHMARKS.md): it keeps the batch of 64 that the digits
    default doubled after that measurement, widens the 7×7 level to 64 channels, trains with
    Muon at lr 4e-3, and, as one stack, drops attention, shifts the schedule to SNR × 4, draws
    t stratified and lowers Muon's momentum to 0.9, then weights the loss by min-SNR-5 instead
    of P2 (each a 3-seed win at 10 minutes)."""
    import dataclasses
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    config = resolve_config(root / "configs" / "fashion_mnist_cpu.toml")
    default = RunConfig()
    assert (config.data.source, config.data.image_size) == ("fashion-mnist", 28)
    assert config.model == dataclasses.replace(default.model, channel_mults=(1, 2, 4))
    assert config.diffusion == dataclasses.replace(
        default.diffusion, schedule_shift=2.0, loss_weight="min_snr"
    )
    assert default.diffusion.loss_weight == "p2"  # the digits default keeps P2
    changed = _train_keys_off_the_default(config)
    assert changed == {
        "steps",
        "sample_every",
        "time_limit_min",
        "batch_size",
        "optimizer",
        "lr",
        "muon_momentum",
        "timestep_sampler",
    }
    assert config.train.batch_size == 64
    assert (config.train.optimizer, config.train.lr) == ("muon", 4e-3)
    assert (config.train.muon_momentum, config.train.timestep_sampler) == (0.9, "stratified")
    assert config.train.time_limit_min == 10


def test_shipped_cifar10_config_is_the_paper_recipe():
    from pathlib import Path

    from ddpmkit.nn import UNet

    root = Path(__file__).resolve().parent.parent
    config = resolve_config(root / "configs" / "cifar10_ddpm.toml")
    assert UNet(config.model).num_parameters() == 35_746_307  # Ho et al.: 35.7M
    assert (config.train.lr, config.train.batch_size, config.train.ema_decay) == (2e-4, 128, 0.9999)
    assert config.data.random_flip and config.model.dropout == 0.1
    assert (config.diffusion.schedule, config.diffusion.num_steps) == ("linear", 1000)


def test_model_in_channels_follows_data_channels_unless_given():
    """Asked once: data.channels=3 alone gives a 3-channel U-Net; a contradicting explicit
    model.in_channels is still an error, and an agreeing one is accepted."""
    assert resolve_config(overrides=["data.channels=3"]).model.in_channels == 3
    assert (
        resolve_config(overrides=["data.channels=3", "model.in_channels=3"]).model.in_channels == 3
    )
    with pytest.raises(ConfigError, match="must equal data.channels"):
        resolve_config(overrides=["data.channels=3", "model.in_channels=1"])


def test_model_learned_variance_follows_the_variance_unless_given():
    """Asked once, as README says: diffusion.variance=learned_range alone doubles the U-Net's
    outputs; an agreeing model.learned_variance is accepted, a contradicting one is one line
    (it used to be replaced without a word)."""
    from ddpmkit.nn import UNet

    derived = resolve_config(overrides=["diffusion.variance=learned_range", "loss=hybrid"])
    assert derived.model.learned_variance and derived.model.out_channels == 2
    assert UNet(derived.model).out[-1].out_channels == 2 * derived.model.in_channels
    agreeing = resolve_config(
        overrides=["diffusion.variance=learned_range", "loss=hybrid", "model.learned_variance=true"]
    )
    assert agreeing.model == derived.model
    for overrides, given, needed in [
        (["model.learned_variance=true"], "true", "false"),
        (
            ["diffusion.variance=learned", "loss=hybrid", "model.learned_variance=false"],
            "false",
            "true",
        ),
    ]:
        with pytest.raises(ConfigError) as info:
            resolve_config(overrides=overrides)
        message = str(info.value)
        assert f"model.learned_variance={given} contradicts diffusion.variance=" in message
        assert f"(which needs {needed})" in message and "\n" not in message


def test_the_default_depth_is_defined_once():
    """The recipe's network is UNetConfig's at half the width without attention: nothing
    else is restated."""
    import dataclasses

    from ddpmkit.config import RunConfig
    from ddpmkit.nn.unet import UNetConfig

    recipe = RunConfig().model
    assert (recipe.base_channels, UNetConfig().base_channels) == (16, 32)
    assert recipe.attention == ("none", "none", "none") and recipe.mid_attention == "none"
    classic = UNetConfig()
    assert (classic.attention, classic.mid_attention) == (("none", "none", "full"), "full")
    assert (
        dataclasses.replace(
            recipe, base_channels=32, attention=classic.attention, mid_attention="full"
        )
        == UNetConfig()
    )
    assert UNetConfig().blocks_per_resolution == 1


def test_the_default_recipe_is_the_measured_one_and_the_classes_stay_classic():
    """`ddpm train` with no arguments trains the combination that won at 60 s and 300 s
    (BENCHMARKS.md); DiffusionConfig() itself (the diffusers import, library users) keeps Ho et
    al.'s linear schedule, ε target and unweighted loss."""
    from ddpmkit.config import DiffusionConfig, RunConfig

    run = RunConfig()
    diffusion = run.diffusion
    assert (diffusion.schedule, diffusion.prediction, diffusion.loss_weight) == (
        "cosine",
        "v",
        "p2",
    )
    assert (run.train.warmup_steps, run.train.ema_decay, run.train.steps) == (50, 0.99, 3000)
    assert (run.train.batch_size, run.train.cpu_fused_adam) == (128, True)
    classic = DiffusionConfig()
    assert (classic.schedule, classic.prediction, classic.loss_weight) == ("linear", "eps", "none")
    assert (diffusion.num_steps, diffusion.variance, diffusion.loss) == (1000, "fixed_small", "l2")


def test_edm_and_kl_runs_need_no_recipe_values_undone():
    """process=edm decides schedule, target and weighting itself, and loss=kl has no simple loss
    to weight: the recipe's cosine / v / P2 step aside unless the user wrote them, in which case
    the contradiction is still one line."""
    edm = resolve_config(overrides=["diffusion.process=edm"]).diffusion
    assert (edm.schedule, edm.prediction, edm.loss_weight, edm.schedule_shift) == (
        "linear",
        "eps",
        "none",
        1.0,
    )
    for key, value in (("schedule", "cosine"), ("prediction", "v"), ("loss_weight", "p2")):
        with pytest.raises(ConfigError, match=f"drop diffusion.{key}"):
            resolve_config(overrides=["diffusion.process=edm", f"diffusion.{key}={value}"])
    kl = ["diffusion.loss=kl", "diffusion.variance=learned_range"]
    config = resolve_config(overrides=kl).diffusion
    assert (config.loss_weight, config.schedule, config.prediction) == ("none", "cosine", "v")
    with pytest.raises(ConfigError, match="loss=kl has none"):
        resolve_config(overrides=[*kl, "diffusion.loss_weight=p2"])


def test_a_saved_run_keeps_the_recipe_it_was_trained_with(tmp_path):
    """A config.json written before diffusion.loss_weight existed (and under the earlier
    default recipe) trained unweighted: reading the run and resuming it keep it unweighted, as
    does completed_saved_config (what the import of an export's ddpmkit.json calls), while a
    config file that leaves the key out gets today's P2."""
    from ddpmkit.config import completed_saved_config
    from ddpmkit.rundir import RunDir
    from ddpmkit.train import prepare_run

    old = RunConfig().to_dict()
    old["diffusion"].update(schedule="linear", prediction="eps")
    old["model"]["base_channels"] = 32
    old["train"].update(steps=2800, warmup_steps=200, ema_decay=0.995)
    later = ("loss_weight", "min_snr_gamma", "p2_gamma", "p2_k", "schedule_shift", "process")
    for key in later:  # fields added by issue 16, absent from the runs saved before it
        del old["diffusion"][key]
    for key in ("ema", "ema_std", "cpu_fused_adam"):
        del old["train"][key]
    run = tmp_path / "old-run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(old))
    saved = RunDir(run).read_config()
    assert (saved.diffusion.loss_weight, saved.diffusion.schedule) == ("none", "linear")
    assert (saved.diffusion.process, saved.train.ema) == ("ddpm", "exponential")
    assert (saved.model.base_channels, saved.train.ema_decay) == (32, 0.995)
    assert saved.train.cpu_fused_adam is False  # it ran torch's per-parameter AdamW loop
    resumed, _ = prepare_run(None, ["train.steps=3000"], resume=run)
    assert resumed.diffusion.loss_weight == "none" and resumed.train.steps == 3000
    assert config_from_dict(completed_saved_config({"diffusion": {}})).diffusion.loss_weight == (
        "none"
    )
    file = tmp_path / "mine.toml"
    file.write_text('[diffusion]\nschedule = "linear"\n')
    assert resolve_config(file).diffusion.loss_weight == "p2"


@pytest.mark.slow
def test_reading_a_run_directory_loads_no_data_source_sampler_or_network() -> None:
    """`import ddpmkit.rundir` (and so the config) loads only the config dataclasses, errors,
    file I/O and the run directory itself: 28 ddpmkit modules before the redesign."""
    import ast
    import os
    import subprocess
    import sys

    code = "import sys, ddpmkit.rundir; print([m for m in sys.modules if m.startswith('ddpmkit')])"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout
    loaded = set(ast.literal_eval(out)) - {"ddpmkit"}
    allowed = ("ddpmkit.config", "ddpmkit.errors", "ddpmkit.fileio", "ddpmkit.rundir")
    assert loaded and all(m.startswith(allowed) for m in loaded), sorted(loaded)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1,2", (1, 2)),
        ("[1, 2]", (1, 2)),
        ("[1,2,2]", (1, 2, 2)),
    ],
)
def test_a_list_override_takes_commas_or_a_bracketed_array(text, expected):
    assert (
        resolve_config(
            overrides=[f"model.channel_mults={text}", _attention(expected)]
        ).model.channel_mults
        == expected
    )


def _attention(mults: tuple[int, ...]) -> str:
    return "model.attention=" + ",".join(["none"] * len(mults))


@pytest.mark.parametrize(
    "text", ['["none", "full"]', "[none, full]", "none,full", "['none','full']"]
)
def test_a_list_of_names_reads_as_in_a_config_file(text):
    config = resolve_config(overrides=["model.channel_mults=1,2", f"model.attention={text}"])
    assert config.model.attention == ("none", "full")


@pytest.mark.parametrize("text", ["[1,2", "1,2]"])
def test_an_unclosed_list_is_one_clear_error(text):
    with pytest.raises(ConfigError, match=r"model.channel_mults must be a list like \[1, 2\]"):
        resolve_config(overrides=[f"model.channel_mults={text}"])


def test_an_unknown_key_in_a_long_section_stays_one_readable_line():
    """[train] has more keys than fit on a line: the message names how many there are and
    lists the nearest first; every key is either shown or counted."""
    import dataclasses

    from ddpmkit.config import TrainConfig

    keys = {f.name for f in dataclasses.fields(TrainConfig)}
    with pytest.raises(ConfigError) as err:
        resolve_config(overrides=["train.nope=1"])
    message = str(err.value)
    assert "\n" not in message and len(message) < 400
    assert f"[train] has {len(keys)} keys" in message
    listed = message.split("nearest first: ")[1].rsplit(" and ", 1)
    shown, rest = listed[0].split(), int(listed[1].split()[0])
    assert set(shown) <= keys and len(shown) + rest == len(keys)
    with pytest.raises(ConfigError, match="did you mean 'train.batch_size'"):
        resolve_config(overrides=["train.batchsize=1"])


def test_digits_8x8_config_is_the_default_recipe_at_native_resolution():
    """configs/digits_8x8.toml is the default recipe on the digits' own 8×8 pixels, on a
    two-level U-Net, with a 60-s budget and a learning rate of 3e-3 (BENCHMARKS.md): the same
    process and optimiser, and a network that differs from the default's only in its levels."""
    import dataclasses
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    config = resolve_config(root / "configs" / "digits_8x8.toml")
    default = RunConfig()
    assert (config.data.source, config.data.image_size) == ("digits", 8)
    two_levels = dataclasses.replace(
        default.model, channel_mults=(1, 2), attention=("none", "none")
    )
    assert config.model == two_levels and config.diffusion == default.diffusion
    assert _train_keys_off_the_default(config) == {
        "steps",
        "sample_every",
        "time_limit_min",
        "lr",
    }
    assert config.train.time_limit_min == 1 and config.train.lr == 3e-3
