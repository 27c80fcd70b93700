"""cascade.training.kid: the unbiased MMD^2 estimate on feature sets with known answers, and the
EfficientNet-Lite0 features telling smooth landscapes from noise."""

from __future__ import annotations

import numpy as np
import pytest

from cascade.training.kid import FeatureExtractor, kid, polynomial_mmd2

DIM = 64


def gaussian(n: int, shift: float = 0.0, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIM)) + shift


def test_identical_sets_score_zero_up_to_one_over_n():
    # For a set against itself the estimate is exactly 2 (mean off-diagonal k - mean diagonal k) / n:
    # slightly negative, vanishing as the set grows, tiny next to a real difference.
    values = []
    for n in (100, 400, 1600):
        a = gaussian(n)
        k = (a @ a.T / DIM + 1) ** 3
        off_diagonal = (k.sum() - np.trace(k)) / (n * (n - 1))
        mean, std = kid(a, a, subset_size=n)
        assert mean == pytest.approx(2 * (off_diagonal - np.trace(k) / n) / n) and std == 0.0
        values.append(mean)
    assert values[0] < values[1] < values[2] < 0
    assert abs(values[2]) < 0.05 * kid(a, a + 0.3, subset_size=len(a))[0]


def test_same_distribution_scores_about_zero():
    mean, std = kid(gaussian(600, seed=1), gaussian(600, seed=2), subsets=20, subset_size=300)
    assert abs(mean) < 3 * std + 1e-3


def test_unbiased_estimate_is_zero_on_average():
    values = [polynomial_mmd2(gaussian(50, seed=2 * i), gaussian(50, seed=2 * i + 1)) for i in range(60)]
    assert abs(np.mean(values)) < 3 * np.std(values) / np.sqrt(len(values))


def test_shift_scores_positive_and_growing():
    base = gaussian(500, seed=3)
    scores = [kid(base, gaussian(500, shift, seed=4), subsets=10, subset_size=250) for shift in (0.1, 0.3, 0.6)]
    means = [m for m, _ in scores]
    assert all(m > 3 * s for m, s in scores)
    assert means[0] < means[1] < means[2]


def test_whole_sets_give_one_value():
    a, b = gaussian(30, seed=5), gaussian(40, 0.5, seed=6)
    mean, std = kid(a, b, subsets=50, subset_size=1000)
    assert std == 0.0 and mean == pytest.approx(polynomial_mmd2(a, b))


def test_seed_picks_the_subsets():
    a, b = gaussian(300, seed=7), gaussian(300, 0.2, seed=8)
    assert kid(a, b, seed=1, subsets=5, subset_size=100) == kid(a, b, seed=1, subsets=5, subset_size=100)
    assert kid(a, b, seed=1, subsets=5, subset_size=100) != kid(a, b, seed=2, subsets=5, subset_size=100)


def test_rejects_mismatched_or_tiny_sets():
    with pytest.raises(ValueError):
        kid(gaussian(10), np.zeros((10, DIM + 1)))
    with pytest.raises(ValueError):
        polynomial_mmd2(gaussian(1), gaussian(10))


def landscapes(n: int, size: int, seed: int) -> np.ndarray:
    """Smooth colour gradients with soft blobs: fields, hills and lakes seen from above."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        angle = rng.uniform(0, 2 * np.pi)
        ramp = np.cos(angle) * xx + np.sin(angle) * yy
        img = rng.uniform(60, 160, 3) + rng.uniform(-50, 50, 3) * ramp[..., None]
        for _ in range(4):
            cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.08, 0.3)
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
            img = img + rng.uniform(-70, 70, 3) * blob[..., None]
        out.append(img)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def noise(n: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def extractor() -> FeatureExtractor:
    return FeatureExtractor("cpu", batch_size=16)


def test_features_shape_and_sizes(extractor):
    feats = extractor(landscapes(3, 48, seed=0))
    assert feats.shape == (3, 1280) and feats.dtype == np.float64 and np.isfinite(feats).all()
    assert feats.std() > 0
    # The same images at another size land near the same features (resized to the input).
    again = extractor(np.repeat(np.repeat(landscapes(3, 48, seed=0), 2, axis=1), 2, axis=2))
    assert np.corrcoef(feats.ravel(), again.ravel())[0, 1] > 0.9
    with pytest.raises(ValueError):
        extractor(np.zeros((2, 16, 16, 3), np.uint8))
    with pytest.raises(ValueError):
        extractor(np.zeros((2, 64, 64, 3), np.float32))


def test_landscapes_vs_noise_far_above_halves_of_one_set(extractor):
    real = extractor(landscapes(24, 64, seed=1))
    fake = extractor(noise(12, 64, seed=2))
    halves, _ = kid(real[:12], real[12:])
    versus, _ = kid(real[:12], fake)
    assert versus > 0.1 and versus > 20 * abs(halves)
