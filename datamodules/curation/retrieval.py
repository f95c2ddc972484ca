"""Retrieval of pool images close to a query set (spec §8 stage 4; paper §3, App. A.2).

- Sample-based (large query sets): the ``k`` nearest pool images of every query image.
- Cluster-based (smaller query sets): spherical k-means of the pool; from every cluster holding
  more than ``min_queries`` (3) query images, up to ``per_cluster`` pool images; at most ``cap``
  per query set. Which images of a cluster and which survive the cap the paper leaves
  unspecified; here: the ones nearest the centroid, and a seeded uniform sample.
"""

import warnings
from dataclasses import dataclass

import faiss
import numpy as np

from datamodules.curation.knn_graph import (
    DEFAULT_SEARCH,
    SearchSettings,
    as_embeddings,
    build_index,
    check_same_dim,
)


@dataclass(frozen=True)
class Retrieval:
    """Retrieved pool ids ``(R,)`` (sorted, unique), their reasons ``(R,)`` and counts."""

    ids: np.ndarray
    reasons: np.ndarray
    num_before_dedup: int  # e.g. k·|queries|, before collisions
    num_before_cap: int


@dataclass(frozen=True)
class PoolClusters:
    """k-means of the pool: ``centroids (C, D)``, ``assignment (N,)``, ``similarity (N,)``."""

    centroids: np.ndarray
    assignment: np.ndarray
    similarity: np.ndarray


def _search(index: faiss.Index, x: np.ndarray, k: int, batch_size: int):
    parts = [index.search(x[s : s + batch_size], k) for s in range(0, len(x), batch_size)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def apply_cap(retrieval: Retrieval, cap: int | None, seed: int = 0) -> Retrieval:
    """Keep a seeded uniform sample of ``cap`` retrieved images (all of them if fewer)."""
    if cap is None or len(retrieval.ids) <= cap:
        return retrieval
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(retrieval.ids), size=cap, replace=False))
    return Retrieval(
        retrieval.ids[rows], retrieval.reasons[rows], retrieval.num_before_dedup, len(retrieval.ids)
    )


def sample_retrieval(
    pool: np.ndarray,
    queries: np.ndarray,
    k: int = 4,
    cap: int | None = None,
    name: str = "query",
    settings: SearchSettings = DEFAULT_SEARCH,
) -> Retrieval:
    """The ``k`` nearest pool images of every query; each reason names the closest query."""
    pool, queries = as_embeddings(pool, "pool"), as_embeddings(queries, f"query set {name!r}")
    check_same_dim(pool, queries, "the pool", f"query set {name!r}")
    sims, ids = _search(
        build_index(pool, settings), queries, min(k, len(pool)), settings.batch_size
    )
    query = np.broadcast_to(np.arange(len(queries))[:, None], ids.shape).ravel()
    ids, sims = ids.ravel(), sims.ravel()
    valid = ids >= 0
    ids, sims, query = ids[valid], sims[valid], query[valid]
    order = np.lexsort((-sims, ids))  # by pool id, most similar query first
    unique_ids, first = np.unique(ids[order], return_index=True)
    best = order[first]
    reasons = np.array(
        [
            f"{name}:knn(query={q},cos={s:.3f})"
            for q, s in zip(query[best], sims[best], strict=True)
        ],
        dtype=object,
    )
    out = Retrieval(unique_ids, reasons, len(ids), len(unique_ids))
    return apply_cap(out, cap, settings.seed)


def cluster_pool(
    pool: np.ndarray, n_clusters: int, niter: int = 20, settings: SearchSettings = DEFAULT_SEARCH
) -> PoolClusters:
    """Spherical faiss k-means of ``pool (N, D)`` into ``min(n_clusters, N)`` clusters."""
    pool = as_embeddings(pool, "pool")
    if n_clusters > len(pool):
        warnings.warn(
            f"{n_clusters} clusters requested for a pool of {len(pool)} images; using {len(pool)}",
            stacklevel=2,
        )
        n_clusters = len(pool)
    if settings.threads is not None:
        faiss.omp_set_num_threads(settings.threads)
    kmeans = faiss.Kmeans(
        pool.shape[1], n_clusters, niter=niter, seed=settings.seed, spherical=True, verbose=False
    )
    kmeans.train(pool)
    centroids = np.ascontiguousarray(kmeans.centroids, dtype=np.float32)
    sims, ids = _search(build_index(centroids, settings), pool, 1, settings.batch_size)
    return PoolClusters(centroids, ids[:, 0].astype(np.int64), sims[:, 0])


def cluster_retrieval(
    clusters: PoolClusters,
    queries: np.ndarray,
    min_queries: int = 3,
    per_cluster: int = 10_000,
    cap: int | None = 1_000_000,
    name: str = "query",
    settings: SearchSettings = DEFAULT_SEARCH,
) -> Retrieval:
    """Pool images of the clusters holding more than ``min_queries`` query images.

    Up to ``per_cluster`` per cluster (nearest the centroid first), then at most ``cap`` in all.
    """
    queries = as_embeddings(queries, f"query set {name!r}")
    check_same_dim(clusters.centroids, queries, "the pool", f"query set {name!r}")
    n_clusters = len(clusters.centroids)
    _, q_ids = _search(build_index(clusters.centroids, settings), queries, 1, settings.batch_size)
    counts = np.bincount(q_ids[:, 0], minlength=n_clusters)
    selected = counts > min_queries
    assignment = clusters.assignment
    order = np.lexsort((-clusters.similarity, assignment))  # by cluster, nearest centroid first
    starts = np.searchsorted(assignment[order], np.arange(n_clusters))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order)) - starts[assignment[order]]
    ids = np.flatnonzero(selected[assignment] & (rank < per_cluster))
    reasons = np.array(
        [f"{name}:cluster(c={c},queries={counts[c]})" for c in assignment[ids]], dtype=object
    )
    out = Retrieval(ids, reasons, len(ids), len(ids))
    return apply_cap(out, cap, settings.seed)
