"""k-NN similarity graphs with faiss and their connected components (spec §8, stages 2-3).

Embeddings are L2-normalised float32, so inner product = cosine similarity. Below
``ivf_min_size`` database vectors the search is exact (``IndexFlatIP``); above it an
``IndexIVFFlat`` (inner product, ``nlist ≈ √N`` lists, ``nprobe`` probed) is trained on a
sample. Queries run in batches and are thresholded at once, so memory holds only the edges.

Why √N lists and a small ``nprobe``: an IVF query costs ``nlist`` centroid products plus
``nprobe·N/nlist`` scanned vectors, smallest near ``nlist = √(nprobe·N)``; on clustered 384-d
data at N = 1e6, nlist = 1000 with nprobe = 2 keeps recall@65 ≈ 0.999 of exact search
(``experiments/benchmarks/curation_scale.py`` measures it).
"""

from dataclasses import dataclass

import faiss
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from datamodules.curation.errors import CurationError


@dataclass(frozen=True)
class SearchSettings:
    """How faiss searches: index type by size, IVF parameters, query batch, threads."""

    ivf_min_size: int = 1_000_000
    nlist: int | None = None  # None: √N
    nprobe: int = 2
    batch_size: int = 16_384
    threads: int | None = None  # None: faiss's default (all cores)
    seed: int = 0


DEFAULT_SEARCH = SearchSettings()


def as_embeddings(x: np.ndarray, name: str) -> np.ndarray:
    """``x`` as a C-contiguous float32 ``(N, D)`` array; empty or non-2-D input is an error."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise CurationError(f"{name} embeddings must be a 2-D (N, D) array, got shape {x.shape}")
    if len(x) == 0:
        raise CurationError(f"{name} is empty: there are no {name} embeddings to work on")
    return x


def check_same_dim(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    """Both embedding sets must come from the same backbone (same dimension)."""
    if a.shape[1] != b.shape[1]:
        raise CurationError(
            f"embedding dimension mismatch: {name_a} has dim {a.shape[1]}, {name_b} has dim "
            f"{b.shape[1]}; embed both with the same backbone"
        )


def build_index(database: np.ndarray, settings: SearchSettings = DEFAULT_SEARCH) -> faiss.Index:
    """An inner-product index over ``database (N, D)``: exact below ``ivf_min_size``, IVF above."""
    if settings.threads is not None:
        faiss.omp_set_num_threads(settings.threads)
    n, d = database.shape
    if n < settings.ivf_min_size:
        index = faiss.IndexFlatIP(d)
    else:
        nlist = settings.nlist or max(1, int(np.sqrt(n)))
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(settings.seed)
        # 40 points per list: above faiss's 39-per-centroid warning, k-means cost stays small.
        sample = rng.choice(n, size=min(n, 40 * nlist), replace=False)
        index.train(database[np.sort(sample)])
        index.nprobe = settings.nprobe  # faiss's wrapper keeps a reference to the quantizer
    index.add(database)
    return index


def knn_edges(
    queries: np.ndarray,
    index: faiss.Index,
    k: int,
    threshold: float,
    exclude_self: bool = False,
    batch_size: int = 16_384,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edges from each query to its ``k`` nearest database vectors with similarity > ``threshold``.

    Returns ``(query_ids, database_ids, similarities)``, each ``(E,)``. With ``exclude_self``
    the queries are the database itself and a vector's edge to itself is dropped.
    """
    k = min(k + int(exclude_self), index.ntotal)
    rows, cols, sims = [], [], []
    for start in range(0, len(queries), batch_size):
        s, i = index.search(queries[start : start + batch_size], k)
        q = np.arange(start, start + len(s))[:, None]
        keep = (s > threshold) & (i >= 0)
        if exclude_self:
            keep &= i != q
        qq, kk = np.nonzero(keep)
        rows.append(q[qq, 0])
        cols.append(i[qq, kk])
        sims.append(s[qq, kk])
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(rows), np.concatenate(cols).astype(np.int64), np.concatenate(sims)


def graph_components(n: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Connected components of the undirected graph on ``n`` nodes with edges ``rows[e]–cols[e]``.

    Returns labels ``(n,)`` int64 in ``[0, C)``; isolated nodes are their own component.
    """
    if n == 0:
        return np.zeros(0, np.int64)
    data = np.ones(len(rows), dtype=np.int8)
    graph = coo_matrix((data, (rows, cols)), shape=(n, n)).tocsr()
    _, labels = connected_components(graph, directed=False)
    return labels.astype(np.int64)


def first_of_each_component(labels: np.ndarray) -> np.ndarray:
    """Boolean ``(n,)`` mask keeping the lowest id of every component."""
    keep = np.zeros(len(labels), dtype=bool)
    _, first = np.unique(labels, return_index=True)
    keep[first] = True
    return keep
