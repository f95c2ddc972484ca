"""Thresholds calibrated from planted vs random pair cosines (datamodules/curation/calibration)."""

import numpy as np
import pytest

from datamodules.curation.calibration import (
    calibrate_threshold,
    pair_cosines,
    random_pair_cosines,
)


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
