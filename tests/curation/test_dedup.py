"""Self-dedup on planted duplicates and relative dedup of whole components."""

import numpy as np
import pytest

from datamodules.curation.dedup import relative_dedup, self_dedup
from datamodules.curation.errors import CurationError
from datamodules.curation.replication import count_test_copies_left, self_dedup_scores


def test_self_dedup_finds_every_planted_duplicate(planted) -> None:
    x, dup_rows, orig_rows = planted
    res = self_dedup(x, k=64, threshold=0.6)
    scores = self_dedup_scores(res.components, res.keep, dup_rows, orig_rows)
    assert scores["dedup/recall"] == 1.0
    assert scores["dedup/precision"] == 1.0 and scores["dedup/false_removals"] == 0
    assert res.num_kept == 1000 and res.keep[:1000].all()  # originals have the lower ids


def test_self_dedup_keeps_one_per_component_lowest_id(unit_rows) -> None:
    # a chain 2-0-1 (cos 0.9 pairwise through e1/e2), then 3 unrelated
    x = unit_rows(np.array([[1, 0.3, 0, 0], [1, 0, 0.3, 0], [1, 0.3, 0.3, 0], [0, 0, 0, 1]]))
    res = self_dedup(x)
    assert res.keep.tolist() == [True, False, False, True]
    assert res.num_components == 2


@pytest.mark.parametrize(("cos", "merged"), [(0.601, True), (0.599, False)])
def test_self_dedup_threshold(cos: float, merged: bool, cosine_pair) -> None:
    res = self_dedup(cosine_pair(cos), threshold=0.6)
    assert res.num_kept == (1 if merged else 2)


def _relative_fixture() -> tuple[np.ndarray, np.ndarray]:
    """Pool: chain 0-1-2 (cos 0.7, 0.5), pair 3-4, isolated 5, 6 at cos 0.449 to the eval
    image, 7 at 0.451. The eval image is near 2 only (0.5), not 0 or 1."""
    e = np.eye(10)
    v1 = 0.7 * e[0] + np.sqrt(0.51) * e[1]
    a = 0.5 / np.sqrt(0.51)
    v2 = a * e[1] + np.sqrt(1 - a**2) * e[2]
    c = 0.5 / np.sqrt(1 - a**2)
    ev = c * e[2] + np.sqrt(1 - c**2) * e[8]
    pool = [e[0], v1, v2, e[3], 0.9 * e[3] + np.sqrt(0.19) * e[4], e[5],
            0.449 * ev + np.sqrt(1 - 0.449**2) * e[6], 0.451 * ev + np.sqrt(1 - 0.451**2) * e[7]]  # fmt: skip
    return np.array(pool, np.float32), ev[None].astype(np.float32)


def test_relative_dedup_drops_whole_components() -> None:
    pool, ev = _relative_fixture()
    assert pool[0] @ ev[0] < 0.45 and pool[1] @ ev[0] < 0.45  # 0, 1 only reach it via 2
    res = relative_dedup(pool, ev, k=64, threshold=0.45)
    assert res.keep.tolist() == [False, False, False, True, True, True, True, False]
    assert res.num_touched == 2  # 2 and 7
    assert count_test_copies_left(np.flatnonzero(res.keep), np.array([2, 7])) == 0


def test_relative_dedup_finds_pool_copies_of_eval_images(planted) -> None:
    x, _, _ = planted
    ref = x[:50] + 0.0  # evaluation images exactly copied into the pool
    res = relative_dedup(x[:1000], ref)
    assert not res.keep[:50].any() and res.keep[50:].all()


def test_dimension_mismatch_names_both_dims(cosine_pair) -> None:
    with pytest.raises(CurationError, match="dim 8.*dim 16"):
        relative_dedup(cosine_pair(0.1, dim=8), cosine_pair(0.1, dim=16))


def test_empty_pool_is_a_clear_error(cosine_pair) -> None:
    with pytest.raises(CurationError, match="pool is empty"):
        self_dedup(np.zeros((0, 8), np.float32))
    with pytest.raises(CurationError, match="evaluation set is empty"):
        relative_dedup(cosine_pair(0.1), np.zeros((0, 8), np.float32))
