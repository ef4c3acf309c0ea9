"""Fréchet distance, KID and precision/recall against closed forms and brute force."""

from dataclasses import dataclass

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.spatial.distance import cdist

from ddpmkit.errors import ConfigError
from ddpmkit.metrics.frechet import GaussianStats, frechet_distance
from ddpmkit.metrics.kid import kernel_inception_distance, mmd2_unbiased, polynomial_kernel
from ddpmkit.metrics.precision_recall import precision_recall
from ddpmkit.metrics.reference import images_fingerprint, reference_features


def random_spd(rng, d, scale=1.0):
    a = rng.normal(size=(d, d)) * scale
    return a @ a.T / d + 0.1 * np.eye(d)


# ---------------------------------------------------------------------------- Fréchet distance


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    mean1, mean2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, -1.0])
    var1, var2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    d = frechet_distance(
        GaussianStats(mean1, np.diag(var1), 10), GaussianStats(mean2, np.diag(var2), 10)
    )
    expected = np.sum((mean1 - mean2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    assert d == pytest.approx(expected, rel=1e-12)  # 1 + 0 + 9 + 4 + 1 + 0 = 15
    assert expected == 15.0


@pytest.mark.parametrize("d", [2, 16, 64])
def test_frechet_distance_matches_scipy_sqrtm_on_non_commuting_covariances(d):
    rng = np.random.default_rng(d)
    c1, c2 = random_spd(rng, d), random_spd(rng, d, 2.0)
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    covmean = scipy.linalg.sqrtm(c1 @ c2).real
    expected = np.sum((m1 - m2) ** 2) + np.trace(c1 + c2 - 2 * covmean)
    got = frechet_distance(GaussianStats(m1, c1, 10), GaussianStats(m2, c2, 10))
    assert got == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_is_stable_for_rank_deficient_covariances():
    """Fewer samples than dimensions: singular covariances, where a general sqrtm goes complex."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 64)), rng.normal(size=(20, 64))
    same = frechet_distance(GaussianStats.of(x), GaussianStats.of(x))
    assert same == pytest.approx(0.0, abs=1e-8)
    assert np.isfinite(frechet_distance(GaussianStats.of(x), GaussianStats.of(y)))


def test_frechet_distance_from_samples():
    """~0 for two large samples of one Gaussian; the closed form for samples of two."""
    rng = np.random.default_rng(1)
    d = 8
    c1, c2 = random_spd(rng, d), random_spd(rng, d)
    m1, m2 = np.zeros(d), np.full(d, 0.5)
    n = 50_000
    x1 = rng.multivariate_normal(m1, c1, size=n)
    x1b = rng.multivariate_normal(m1, c1, size=n)
    x2 = rng.multivariate_normal(m2, c2, size=n)
    exact = frechet_distance(GaussianStats(m1, c1, n), GaussianStats(m2, c2, n))
    assert exact > 2.0
    assert frechet_distance(GaussianStats.of(x1), GaussianStats.of(x1b)) < 0.01
    assert frechet_distance(GaussianStats.of(x1), GaussianStats.of(x2)) == pytest.approx(
        exact, rel=0.02
    )


def test_frechet_distance_refuses_mismatched_dimensions():
    with pytest.raises(ConfigError, match="same extractor"):
        frechet_distance(
            GaussianStats(np.zeros(2), np.eye(2), 5), GaussianStats(np.zeros(3), np.eye(3), 5)
        )


# ---------------------------------------------------------------------------------------- KID


def expected_kernel(m1, c1, m2, c2):
    """E[(xᵀy/d + 1)³] for independent x ~ N(m1, c1), y ~ N(m2, c2), derived from Gaussian
    moments: with u = xᵀy, E[u] = m1ᵀm2, E[u²] = tr((c1 + m1m1ᵀ)(c2 + m2m2ᵀ)) and
    E[u³] = m³ + 3m·m1ᵀc2m1 + 3(m(m2ᵀc1m2 + tr(c1c2)) + 2 m1ᵀc2c1m2), m = m1ᵀm2."""
    d = len(m1)
    m = m1 @ m2
    e1 = m
    e2 = np.trace((c1 + np.outer(m1, m1)) @ (c2 + np.outer(m2, m2)))
    e3 = (
        m**3
        + 3 * m * (m1 @ c2 @ m1)
        + 3 * (m * (m2 @ c1 @ m2 + np.trace(c1 @ c2)) + 2 * m1 @ c2 @ c1 @ m2)
    )
    return e3 / d**3 + 3 * e2 / d**2 + 3 * e1 / d + 1


def test_the_kernel_expectation_formula_itself():
    rng = np.random.default_rng(5)
    d = 3
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    c1, c2 = random_spd(rng, d), random_spd(rng, d)
    x = rng.multivariate_normal(m1, c1, size=400_000)
    y = rng.multivariate_normal(m2, c2, size=400_000)
    values = (np.sum(x * y, axis=1) / d + 1) ** 3
    se = values.std() / np.sqrt(len(values))
    assert abs(values.mean() - expected_kernel(m1, c1, m2, c2)) < 5 * se


def test_kid_estimate_is_unbiased_for_the_closed_form_mmd():
    rng = np.random.default_rng(2)
    d = 4
    m1, m2 = np.zeros(d), np.full(d, 0.3)
    c1, c2 = np.eye(d), 1.5 * np.eye(d)
    mmd2 = (
        expected_kernel(m1, c1, m1, c1)
        + expected_kernel(m2, c2, m2, c2)
        - 2 * expected_kernel(m1, c1, m2, c2)
    )
    estimates = np.array(
        [
            mmd2_unbiased(
                rng.multivariate_normal(m1, c1, size=50), rng.multivariate_normal(m2, c2, size=50)
            )
            for _ in range(4000)
        ]
    )
    se = estimates.std() / np.sqrt(len(estimates))
    assert mmd2 > 10 * se
    assert abs(estimates.mean() - mmd2) < 4 * se


def test_kid_of_one_distribution_averages_to_zero_where_the_biased_estimate_does_not():
    rng = np.random.default_rng(3)
    unbiased, biased = [], []
    for _ in range(3000):
        x, y = rng.normal(size=(20, 4)), rng.normal(size=(20, 4))
        unbiased.append(mmd2_unbiased(x, y))
        biased.append(
            polynomial_kernel(x, x).mean()
            + polynomial_kernel(y, y).mean()
            - 2 * polynomial_kernel(x, y).mean()
        )
    unbiased, biased = np.array(unbiased), np.array(biased)
    se = unbiased.std() / np.sqrt(len(unbiased))
    assert abs(unbiased.mean()) < 4 * se
    assert biased.mean() > 20 * se


def test_kid_subsets_report_mean_and_spread():
    rng = np.random.default_rng(4)
    real, fake = rng.normal(size=(600, 8)), rng.normal(0.5, 1.0, size=(500, 8))
    kid = kernel_inception_distance(real, fake, subsets=20, subset_size=1000, seed=0)
    assert kid.subset_size == 500 and kid.subsets == 20
    assert kid.mean > 5 * kid.std > 0
    again = kernel_inception_distance(real, fake, subsets=20, subset_size=1000, seed=0)
    assert again == kid
    near = kernel_inception_distance(real, rng.normal(size=(500, 8)), subsets=20)
    assert abs(near.mean) < 3 * near.std


def test_kid_errors():
    with pytest.raises(ConfigError):
        kernel_inception_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ConfigError):
        kernel_inception_distance(np.zeros((5, 3)), np.zeros((5, 3)), subsets=0)


# -------------------------------------------------------------------------- precision/recall


def brute_force_precision_recall(real, fake, k):
    def radii(x):
        d = cdist(x, x)
        return np.sort(d, axis=1)[:, k]

    def share(queries, support, r):
        return np.mean([np.any(cdist(q[None], support)[0] <= r) for q in queries])

    return share(fake, real, radii(real)), share(real, fake, radii(fake))


def test_precision_recall_matches_brute_force():
    rng = np.random.default_rng(6)
    real = rng.normal(size=(300, 5))
    fake = rng.normal(0.4, 1.3, size=(250, 5))
    got = precision_recall(real, fake, k=3)
    p, r = brute_force_precision_recall(real, fake, 3)
    assert (got.precision, got.recall) == pytest.approx((p, r), abs=1e-12)
    assert 0.05 < got.precision < 0.95 and 0.05 < got.recall < 1.0  # not a trivial case


def test_precision_recall_see_mode_dropping_and_off_manifold_samples():
    rng = np.random.default_rng(7)
    left = rng.normal(-10, 1, size=(1000, 2))
    right = rng.normal(10, 1, size=(1000, 2))
    real = np.concatenate([left, right])
    same = precision_recall(real, real, k=3)
    assert (same.precision, same.recall) == (1.0, 1.0)
    dropped = precision_recall(real, rng.normal(-10, 1, size=(1000, 2)), k=3)
    assert dropped.precision > 0.95 and 0.45 < dropped.recall < 0.55
    far = precision_recall(real, rng.normal(0, 0.1, size=(500, 2)), k=3)
    assert far.precision == 0.0 and far.recall == 0.0


def test_precision_recall_errors():
    with pytest.raises(ConfigError, match="k must be"):
        precision_recall(np.zeros((3, 2)), np.zeros((3, 2)), k=3)


# ----------------------------------------------------------------------- cached reference


@dataclass
class CountingExtractor:
    """A stand-in extractor: mean pixel value and its square, counting the images it embeds."""

    fingerprint: str = "v1"
    name: str = "counting"
    dims: int = 2
    calls: int = 0

    def __call__(self, images):
        self.calls += len(images)
        x = images.float().flatten(1).mean(1) / 255
        return torch.stack([x, x**2], dim=1)


def test_reference_features_are_cached_and_invalidated(tmp_path):
    images = torch.randint(0, 256, (30, 1, 8, 8), dtype=torch.uint8)
    extractor = CountingExtractor()
    first, cached = reference_features(images, extractor, tmp_path, progress=False)
    assert not cached and extractor.calls == 30
    again, cached = reference_features(images, extractor, tmp_path, progress=False)
    assert cached and extractor.calls == 30
    np.testing.assert_array_equal(first, again)

    changed = images.clone()
    changed[0, 0, 0, 0] ^= 1  # one bit of one pixel
    assert images_fingerprint(changed) != images_fingerprint(images)
    _, cached = reference_features(changed, extractor, tmp_path, progress=False)
    assert not cached and extractor.calls == 60

    retrained = CountingExtractor(fingerprint="v2")
    _, cached = reference_features(images, retrained, tmp_path, progress=False)
    assert not cached and retrained.calls == 30


def test_a_corrupt_cache_entry_is_recomputed(tmp_path):
    images = torch.randint(0, 256, (10, 1, 4, 4), dtype=torch.uint8)
    extractor = CountingExtractor()
    reference_features(images, extractor, tmp_path, progress=False)
    (entry,) = (tmp_path / "reference").iterdir()
    entry.write_bytes(b"not an npz")
    features, cached = reference_features(images, extractor, tmp_path, progress=False)
    assert not cached and features.shape == (10, 2)
    _, cached = reference_features(images, extractor, tmp_path, progress=False)
    assert cached
