"""Evaluation presets shared by ``ddpm eval`` and ``ddpm fid``.

``paper``: the protocol of published FIDs (Heusel et al. 2017; DDPM, Improved DDPM, ADM):
Inception-v3 features of 50,000 generated samples against the whole reference set. Fewer samples
bias FID upwards, so a run with fewer samples (or a reference of fewer images) is still scored,
with a warning that its numbers are not comparable with published ones.
"""

from __future__ import annotations

from ddpmkit.config.messages import check_choice
from ddpmkit.errors import ConfigError

PRESETS = ("paper",)
PAPER_SAMPLES = 50_000
PAPER_FEATURES = "inception"


def check_preset(preset: str | None) -> None:
    if preset is not None:
        check_choice("preset", preset, PRESETS)


def preset_features(preset: str | None, features: str | None) -> str | None:
    """The extractor a preset implies: ``paper`` needs ``inception`` (an explicit other choice
    is an error); no preset leaves ``features`` as it is."""
    check_preset(preset)
    if preset != "paper":
        return features
    if features is not None and features != PAPER_FEATURES:
        raise ConfigError(
            f"--preset paper uses {PAPER_FEATURES} features: drop --features {features}"
        )
    return PAPER_FEATURES


def paper_warning(what: str, n: int) -> str | None:
    """A warning when ``what`` (e.g. "the samples") has fewer than 50,000 images, else None."""
    if n >= PAPER_SAMPLES:
        return None
    return (
        f"--preset paper: {what} has {n:,} images, fewer than the {PAPER_SAMPLES:,} of the "
        "published protocol; FID is biased upwards at small n, so this number is not comparable "
        "with published ones"
    )
