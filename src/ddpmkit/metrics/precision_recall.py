"""Improved precision and recall (Kynkäänniemi et al. 2019): each set's manifold is the union of
balls around its points with radius the distance to the k-th nearest neighbour within the set;
precision is the share of generated points inside the real manifold, recall the share of real
points inside the generated one."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ddpmkit.errors import ConfigError


@dataclass(frozen=True)
class PrecisionRecall:
    precision: float
    recall: float
    k: int


def _distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between the rows of ``a`` and ``b`` (float64)."""
    return torch.cdist(a, b)


def knn_radii(features: torch.Tensor, k: int, batch_size: int = 1024) -> torch.Tensor:
    """Distance from each row to its k-th nearest other row."""
    radii = []
    for start in range(0, len(features), batch_size):
        d = _distances(features[start : start + batch_size], features)
        # the k+1-th smallest, since each row is at distance 0 from itself
        radii.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def coverage(
    queries: torch.Tensor, support: torch.Tensor, radii: torch.Tensor, batch_size: int = 1024
) -> float:
    """Share of ``queries`` within distance radii[j] of some support[j]."""
    inside = 0
    for start in range(0, len(queries), batch_size):
        d = _distances(queries[start : start + batch_size], support)
        inside += int((d <= radii[None, :]).any(dim=1).sum())
    return inside / len(queries)


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> PrecisionRecall:
    """Precision and recall of ``fake`` against ``real`` with k-NN manifolds (k = 3 as in the
    paper)."""
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ConfigError(
            f"need two (N, D) feature arrays of one D, got {real.shape} and {fake.shape}"
        )
    if k < 1 or k >= min(len(real), len(fake)):
        raise ConfigError(
            f"k must be in [1, {min(len(real), len(fake)) - 1}] for these sets, got {k}"
        )
    r = torch.as_tensor(np.asarray(real), dtype=torch.float64)
    f = torch.as_tensor(np.asarray(fake), dtype=torch.float64)
    precision = coverage(f, r, knn_radii(r, k))
    recall = coverage(r, f, knn_radii(f, k))
    return PrecisionRecall(precision, recall, k)
