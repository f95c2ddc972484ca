"""Self- and relative deduplication (spec §8 stages 2-3; paper §3, App. A).

Self-dedup: a ``k``-NN graph of the pool, edges with cosine > ``threshold`` (0.6), connected
components, one image kept per component (the lowest id: the paper leaves the rule unspecified).
Relative dedup: the pool's own graph at the relative threshold (0.45) plus its edges to the
evaluation embeddings (both search directions); every pool component touching an evaluation
image is dropped whole.
"""

from dataclasses import dataclass

import faiss
import numpy as np

from datamodules.curation.knn_graph import (
    DEFAULT_SEARCH,
    SearchSettings,
    as_embeddings,
    build_index,
    check_same_dim,
    first_of_each_component,
    graph_components,
    knn_edges,
)

SELF_DEDUP_THRESHOLD = 0.6
RELATIVE_DEDUP_THRESHOLD = 0.45
KNN_K = 64


@dataclass(frozen=True)
class DedupResult:
    """``keep (N,) bool`` over the input rows, ``components (N,) int64`` and graph statistics."""

    keep: np.ndarray
    components: np.ndarray
    num_edges: int
    num_touched: int = 0  # relative dedup: pool images with an edge to an evaluation image

    @property
    def num_kept(self) -> int:
        return int(self.keep.sum())

    @property
    def num_components(self) -> int:
        return len(np.unique(self.components))


def pool_graph(
    pool: np.ndarray, index: faiss.Index, k: int, threshold: float, batch_size: int
) -> tuple[np.ndarray, int]:
    """Components ``(N,)`` of the pool's k-NN graph at ``threshold`` and its edge count."""
    rows, cols, _ = knn_edges(pool, index, k, threshold, True, batch_size)
    return graph_components(len(pool), rows, cols), len(rows)


def self_dedup(
    embeddings: np.ndarray,
    k: int = KNN_K,
    threshold: float = SELF_DEDUP_THRESHOLD,
    settings: SearchSettings = DEFAULT_SEARCH,
) -> DedupResult:
    """Keep one image (the lowest id) per connected component of the pool's similarity graph.

    Args:
        embeddings: ``(N, D)`` L2-normalised float32.
        k: neighbours searched per image (64); an edge needs cosine > ``threshold``.
    """
    pool = as_embeddings(embeddings, "pool")
    index = build_index(pool, settings)
    components, num_edges = pool_graph(pool, index, k, threshold, settings.batch_size)
    return DedupResult(first_of_each_component(components), components, num_edges)


def relative_dedup(
    embeddings: np.ndarray,
    reference: np.ndarray,
    k: int = KNN_K,
    threshold: float = RELATIVE_DEDUP_THRESHOLD,
    settings: SearchSettings = DEFAULT_SEARCH,
) -> DedupResult:
    """Drop every pool component (graph at ``threshold``) holding an image near a reference image.

    Args:
        embeddings: pool ``(N, D)``; reference: evaluation images ``(M, D)``, both normalised.
    Returns ``keep (N,)``: False for every image of a component that touches the reference.
    """
    pool = as_embeddings(embeddings, "pool")
    ref = as_embeddings(reference, "evaluation set")
    check_same_dim(pool, ref, "the pool", "the evaluation set")
    pool_index, ref_index = build_index(pool, settings), build_index(ref, settings)
    components, num_edges = pool_graph(pool, pool_index, k, threshold, settings.batch_size)
    _, from_ref, _ = knn_edges(ref, pool_index, k, threshold, False, settings.batch_size)
    to_ref, _, _ = knn_edges(pool, ref_index, k, threshold, False, settings.batch_size)
    touched = np.unique(np.concatenate([from_ref, to_ref]))
    keep = ~np.isin(components, components[touched])
    return DedupResult(keep, components, num_edges + len(from_ref) + len(to_ref), len(touched))
