"""Sample- and cluster-based retrieval: k, collisions, the > 3 rule, N per cluster, the cap."""

import numpy as np
import pytest

from datamodules.curation.errors import CurationError
from datamodules.curation.retrieval import (
    PoolClusters,
    Retrieval,
    apply_cap,
    cluster_pool,
    cluster_retrieval,
    sample_retrieval,
)


def test_sample_retrieval_takes_k_nearest_per_query(unit_rows) -> None:
    rng = np.random.default_rng(0)
    pool, queries = (
        unit_rows(rng.standard_normal((300, 32))),
        unit_rows(rng.standard_normal((10, 32))),
    )
    res = sample_retrieval(pool, queries, k=4)
    expected = np.unique(np.argsort(-queries @ pool.T, axis=1)[:, :4])
    assert np.array_equal(res.ids, expected)
    assert res.num_before_dedup == 40 and len(res.ids) <= 40
    assert all(r.startswith("query:knn(query=") for r in res.reasons)


def test_sample_retrieval_collisions_counted_once(unit_rows) -> None:
    rng = np.random.default_rng(1)
    pool = unit_rows(rng.standard_normal((300, 32)))
    q = unit_rows(rng.standard_normal((1, 32)))
    res = sample_retrieval(pool, np.repeat(q, 3, axis=0), k=5, name="in1k")
    assert len(res.ids) == 5 and res.num_before_dedup == 15
    assert res.reasons[0].startswith("in1k:knn(query=0,")  # ties: the first query


def test_sample_retrieval_cap(unit_rows) -> None:
    rng = np.random.default_rng(2)
    pool, queries = (
        unit_rows(rng.standard_normal((300, 32))),
        unit_rows(rng.standard_normal((20, 32))),
    )
    full = sample_retrieval(pool, queries, k=4)
    capped = sample_retrieval(pool, queries, k=4, cap=7)
    assert len(capped.ids) == 7 and np.isin(capped.ids, full.ids).all()
    assert capped.num_before_cap == len(full.ids)


def _blobs(unit_rows) -> tuple[PoolClusters, np.ndarray]:
    """4 clusters of 30 pool points around orthogonal centroids; queries 5/4/3/0 per cluster."""
    rng = np.random.default_rng(3)
    centroids = np.eye(8, dtype=np.float32)[:4]
    assignment = np.repeat(np.arange(4), 30)
    pool = unit_rows(centroids[assignment] + 0.1 * rng.standard_normal((120, 8)))
    counts = [5, 4, 3, 0]
    q_assign = np.repeat(np.arange(4), counts)
    queries = unit_rows(centroids[q_assign] + 0.1 * rng.standard_normal((len(q_assign), 8)))
    sims = np.einsum("nd,nd->n", pool, centroids[assignment])
    return PoolClusters(centroids, assignment, sims), queries


def test_cluster_retrieval_more_than_three_queries_rule(unit_rows) -> None:
    clusters, queries = _blobs(unit_rows)
    res = cluster_retrieval(clusters, queries, min_queries=3, per_cluster=10_000, cap=None)
    assert set(clusters.assignment[res.ids]) == {0, 1}  # 5 and 4 queries; not 3, not 0
    assert len(res.ids) == 60
    assert {r.split(":")[1] for r in res.reasons} == {
        "cluster(c=0,queries=5)",
        "cluster(c=1,queries=4)",
    }


def test_cluster_retrieval_n_per_cluster_nearest_centroid_first(unit_rows) -> None:
    clusters, queries = _blobs(unit_rows)
    res = cluster_retrieval(clusters, queries, per_cluster=10, cap=None)
    for c in (0, 1):
        members = np.flatnonzero(clusters.assignment == c)
        nearest = members[np.argsort(-clusters.similarity[members])[:10]]
        assert np.array_equal(np.sort(res.ids[clusters.assignment[res.ids] == c]), np.sort(nearest))


def test_cluster_retrieval_cap(unit_rows) -> None:
    clusters, queries = _blobs(unit_rows)
    res = cluster_retrieval(clusters, queries, per_cluster=10, cap=15)
    assert len(res.ids) == 15 and res.num_before_cap == 20
    assert np.array_equal(res.ids, np.unique(res.ids))


def test_apply_cap_is_seeded() -> None:
    r = Retrieval(np.arange(100), np.array(["x"] * 100, dtype=object), 100, 100)
    a, b = apply_cap(r, 10, seed=0), apply_cap(r, 10, seed=0)
    assert np.array_equal(a.ids, b.ids) and len(a.ids) == 10
    assert apply_cap(r, None) is r and apply_cap(r, 1000) is r


def test_cluster_pool_assigns_to_nearest_centroid(unit_rows) -> None:
    rng = np.random.default_rng(4)
    pool = unit_rows(rng.standard_normal((200, 16)))
    cl = cluster_pool(pool, 8, niter=5)
    assert cl.centroids.shape == (8, 16) and cl.assignment.max() < 8
    sims = pool @ cl.centroids.T
    assert np.array_equal(cl.assignment, sims.argmax(1))
    np.testing.assert_allclose(cl.similarity, sims.max(1), atol=1e-5)
    with pytest.warns(UserWarning, match="5 clusters requested for a pool of 3"):
        assert len(cluster_pool(pool[:3], 5, niter=2).centroids) == 3


def test_query_dimension_mismatch(unit_rows) -> None:
    rng = np.random.default_rng(5)
    pool, queries = (
        unit_rows(rng.standard_normal((10, 384))),
        unit_rows(rng.standard_normal((3, 768))),
    )
    with pytest.raises(CurationError, match="pool has dim 384, query set 'q' has dim 768"):
        sample_retrieval(pool, queries, name="q")
    clusters = PoolClusters(pool[:2], np.zeros(10, int), np.ones(10))
    with pytest.raises(CurationError, match="dim 384.*dim 768"):
        cluster_retrieval(clusters, queries, name="q")
