"""Thresholds calibrated from planted vs random pair cosines (datamodules/curation/calibration)."""

import numpy as np
import pytest

from datamodules.curation.calibration import (
    calibrate_threshold,
    pair_cosines,
    random_cross_pair_cosines,
    random_pair_cosines,
)
from datamodules.curation.errors import CurationError


def test_pair_cosines_match_the_dot_product_formula(unit_rows) -> None:
    rng = np.random.default_rng(0)
    a, b = unit_rows(rng.standard_normal((50, 8))), unit_rows(rng.standard_normal((50, 8)))
    expected = [float(np.dot(u, v)) for u, v in zip(a, b, strict=True)]
    np.testing.assert_allclose(pair_cosines(a, b), expected, atol=1e-6)


def test_random_pairs_never_pair_a_row_with_itself() -> None:
    x = np.eye(6, dtype=np.float32)  # distinct rows are orthogonal: any self pair gives cos 1
    cos = random_pair_cosines(x, 10_000, seed=3)
    assert cos.shape == (10_000,) and np.all(cos == 0.0)


def test_separated_distributions_give_the_midpoint() -> None:
    random = np.linspace(0.0, 0.5, 1001)  # 99 % quantile 0.495
    planted = np.linspace(0.9, 1.0, 101)  # 1 % quantile 0.901
    t = calibrate_threshold(planted, random, random_q=0.99)
    assert t == pytest.approx((0.495 + 0.901) / 2)
    assert np.mean(random > t) < 0.01 and np.all(planted > t)


def test_overlap_keeps_the_false_edge_bound() -> None:
    random = np.linspace(0.0, 0.95, 951)
    planted = np.linspace(0.5, 1.0, 51)  # below the random pairs' 99.9 % quantile
    t = calibrate_threshold(planted, random, random_q=0.999)
    assert t == pytest.approx(np.quantile(random, 0.999))
    assert np.mean(random > t) <= 0.001 + 1 / len(random)  # one sample of discreteness


def _pool_with_exact_copies(unit_rows) -> tuple[np.ndarray, np.ndarray]:
    """200 random unit vectors (dim 64: natural pairs stay below cos ~0.6) then exact copies of
    20 of them, with each row's source-image group."""
    rng = np.random.default_rng(0)
    base = unit_rows(rng.standard_normal((200, 64)))
    originals = rng.choice(200, size=20, replace=False)
    groups = np.concatenate([np.arange(200), originals])
    return np.concatenate([base, base[originals]]), groups


def test_null_of_distinct_images_keeps_the_threshold_off_the_planted_copies(unit_rows) -> None:
    # The old null sampled every pair of distinct rows, planted copies included: 200,000 pairs
    # of 220 rows hold ~166 copy pairs at cos 1, and the 1 - 0.05/220 quantile (the ~45th
    # largest cosine) landed on them, so the threshold was 1 and bounded nothing.
    x, groups = _pool_with_exact_copies(unit_rows)
    q = 1 - 0.05 / len(x)
    copies = np.ones(20)
    with_copies = random_pair_cosines(x, 200_000, seed=0)
    assert np.sum(with_copies > 0.999) > 100
    assert calibrate_threshold(copies, with_copies, q) > 0.999  # the flaw, kept visible
    null = random_pair_cosines(x, 200_000, seed=0, groups=groups)
    assert null.max() < 0.7  # no copy pair drawn
    t = calibrate_threshold(copies, null, q)
    assert t < 0.9 and t == pytest.approx((np.quantile(null, q) + 1.0) / 2)


def test_cross_pairs_never_pair_a_test_copy_with_its_test_image(unit_rows) -> None:
    rng = np.random.default_rng(1)
    evals = unit_rows(rng.standard_normal((30, 64)))
    pool = np.concatenate([unit_rows(rng.standard_normal((40, 64))), evals[:10]])
    pool_groups = np.concatenate([np.arange(40), 100 + np.arange(10)])  # copies of evals 0..9
    eval_groups = 100 + np.arange(30)
    cos = random_cross_pair_cosines(pool, evals, 50_000, 0, pool_groups, eval_groups)
    assert cos.shape == (50_000,) and cos.max() < 0.7
    assert random_cross_pair_cosines(pool, evals, 50_000, 0).max() > 0.999  # without groups


def test_group_arguments_are_checked() -> None:
    x = np.eye(4, dtype=np.float32)
    with pytest.raises(CurationError, match="3 source-image groups for 4 pool rows"):
        random_pair_cosines(x, 10, groups=[0, 1, 2])
    with pytest.raises(CurationError, match="shares a source-image group"):
        random_pair_cosines(x, 10, groups=[7, 7, 7, 7])
    with pytest.raises(CurationError, match="both sides or for neither"):
        random_cross_pair_cosines(x, x, 10, 0, x_groups=np.arange(4))
