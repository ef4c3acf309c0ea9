"""The one scoring function of ``ddpm eval`` and ``ddpm fid``: FID from two sets' statistics,
and KID and precision/recall where both sets' features are at hand, always with the reference
set first (so the two commands give the same numbers for the same sets)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ddpmkit.metrics.frechet import GaussianStats, frechet_distance
from ddpmkit.metrics.kid import KID, kernel_inception_distance
from ddpmkit.metrics.precision_recall import PrecisionRecall, precision_recall


@dataclass(frozen=True)
class Scores:
    fid: float
    kid: KID | None = None  # both sets' features needed
    precision_recall: PrecisionRecall | None = None  # more than k images on each side too


def score_sets(
    reference: GaussianStats,
    generated: GaussianStats,
    reference_features: np.ndarray | None = None,
    generated_features: np.ndarray | None = None,
    *,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
    k: int = 3,
) -> Scores:
    """FID (Heusel et al. 2017) of the two sets' statistics; KID (Bińkowski et al. 2018) and
    precision/recall (Kynkäänniemi et al. 2019, k nearest neighbours) of their features."""
    fid = frechet_distance(reference, generated)
    if reference_features is None or generated_features is None:
        return Scores(fid)
    kid = kernel_inception_distance(
        reference_features, generated_features, kid_subsets, kid_subset_size, seed
    )
    if min(len(reference_features), len(generated_features)) <= k:
        return Scores(fid, kid)
    return Scores(fid, kid, precision_recall(reference_features, generated_features, k))
