"""k-NN edges, thresholds, index choice and connected components."""

import faiss
import numpy as np
import pytest

from datamodules.curation.errors import CurationError
from datamodules.curation.knn_graph import (
    SearchSettings,
    as_embeddings,
    build_index,
    check_same_dim,
    first_of_each_component,
    graph_components,
    knn_edges,
)


def same(labels: np.ndarray, *nodes: int) -> bool:
    return len({int(labels[n]) for n in nodes}) == 1


def test_components_of_hand_made_graph() -> None:
    # 0-1-2 a chain (0 and 2 not adjacent), 3 isolated, 4-5 given twice and both ways, 6 self-loop
    rows, cols = np.array([0, 1, 4, 5, 4, 6]), np.array([1, 2, 5, 4, 5, 6])
    labels = graph_components(7, rows, cols)
    assert same(labels, 0, 1, 2) and same(labels, 4, 5)
    assert len(np.unique(labels)) == 4
    assert len({labels[0], labels[3], labels[4], labels[6]}) == 4


def test_components_without_edges_and_of_empty_graph() -> None:
    assert np.array_equal(
        np.sort(graph_components(3, np.zeros(0, int), np.zeros(0, int))), [0, 1, 2]
    )
    assert graph_components(0, np.zeros(0, int), np.zeros(0, int)).shape == (0,)


def test_components_directed_edges_are_undirected() -> None:
    labels = graph_components(4, np.array([3, 2]), np.array([2, 1]))  # 3→2→1 only
    assert same(labels, 1, 2, 3) and not same(labels, 0, 1)


def test_first_of_each_component_keeps_lowest_id() -> None:
    keep = first_of_each_component(np.array([2, 0, 2, 1, 0, 1]))
    assert keep.tolist() == [True, True, False, True, False, False]


@pytest.mark.parametrize("threshold", [0.6, 0.45])
def test_edges_just_above_and_below_threshold(threshold: float, cosine_pair) -> None:
    above, below = cosine_pair(threshold + 0.001), cosine_pair(threshold - 0.001)
    for pair, expected in ((above, 1), (below, 0)):
        rows, cols, _ = knn_edges(pair, build_index(pair), 64, threshold, exclude_self=True)
        assert len(rows) == 2 * expected  # both directions, no self edges
        assert np.all(rows != cols)


def test_self_edges_dropped_but_exact_duplicates_kept(cosine_pair) -> None:
    x = np.repeat(cosine_pair(0.1)[:1], 3, axis=0)  # three identical vectors
    rows, cols, sims = knn_edges(x, build_index(x), 64, 0.6, exclude_self=True)
    assert len(rows) == 6 and np.all(rows != cols) and np.allclose(sims, 1.0)


def test_index_type_chosen_by_size(unit_rows) -> None:
    rng = np.random.default_rng(0)
    x = unit_rows(rng.standard_normal((400, 16)))
    assert isinstance(build_index(x, SearchSettings(ivf_min_size=401)), faiss.IndexFlatIP)
    ivf = build_index(x, SearchSettings(ivf_min_size=400, nlist=4, nprobe=4))
    assert isinstance(ivf, faiss.IndexIVFFlat) and ivf.nprobe == 4 and ivf.ntotal == 400
    # nprobe = nlist: the IVF search is exhaustive, so it finds the exact neighbours
    exact = build_index(x, SearchSettings())
    assert np.array_equal(ivf.search(x[:20], 5)[1], exact.search(x[:20], 5)[1])


def test_ivf_defaults_sqrt_n_lists_and_keeps_planted_duplicates(planted) -> None:
    x, dups, originals = planted
    ivf = build_index(x, SearchSettings(ivf_min_size=0))
    assert isinstance(ivf, faiss.IndexIVFFlat)
    assert ivf.nlist == int(np.sqrt(len(x))) and ivf.nprobe == SearchSettings().nprobe
    rows, cols, _ = knn_edges(x, ivf, 64, 0.6, exclude_self=True)
    labels = graph_components(len(x), rows, cols)
    assert np.array_equal(labels[dups], labels[originals])


def test_batched_search_equals_one_batch(unit_rows) -> None:
    rng = np.random.default_rng(1)
    x = unit_rows(rng.standard_normal((300, 16)))
    index = build_index(x)
    one = knn_edges(x, index, 10, 0.2, True, batch_size=1000)
    many = knn_edges(x, index, 10, 0.2, True, batch_size=7)
    for a, b in zip(one, many, strict=True):
        assert np.array_equal(a, b)


def test_bad_embeddings_are_clear_errors() -> None:
    with pytest.raises(CurationError, match="pool is empty"):
        as_embeddings(np.zeros((0, 8)), "pool")
    with pytest.raises(CurationError, match="2-D"):
        as_embeddings(np.zeros(8), "pool")
    with pytest.raises(CurationError, match="dim 384.*dim 768"):
        check_same_dim(np.zeros((2, 384)), np.zeros((2, 768)), "the pool", "the queries")
