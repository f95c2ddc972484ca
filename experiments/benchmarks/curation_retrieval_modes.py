"""What each retrieval mode pulls from a curated replication pool (issue 5, item 3 diagnosis).

    python experiments/benchmarks/curation_retrieval_modes.py --work logs/benchmarks/curation_replication

Reads a finished evaluation set-up of ``curation_replication.py`` (its embeddings and the pool
kept by relative dedup) and reruns only the retrieval with other settings: cluster-based with
other cluster counts and "> m queries" rules, and sample-based with k nearest per query. For
each, the images per source and the Fashion-MNIST class histogram, beside the query set's and
the deduplicated pool's: does retrieval keep the query domain, and does it drop whole classes?
"""

import argparse
import os
from pathlib import Path

import numpy as np

from datamodules.curated_datamodule import ManifestImageSource
from datamodules.curation.embed import load_embeddings
from datamodules.curation.knn_graph import SearchSettings
from datamodules.curation.manifest import Manifest
from datamodules.curation.replication import set_composition
from datamodules.curation.retrieval import cluster_pool, cluster_retrieval, sample_retrieval


def describe(name: str, manifest: Manifest, labels: np.ndarray) -> list[str]:
    """A table row: images, per source, Fashion-MNIST classes, smallest class / uniform share."""
    c = set_composition(manifest, labels)
    h = c["fashion_classes"]
    per_source = ", ".join(f"{k} {v}" for k, v in sorted(c["sources"].items()))
    share = h.min() / max(h.sum(), 1) * len(h)
    return [name, str(len(manifest)), per_source, " / ".join(map(str, h)), f"{share:.2f}"]


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--work", type=Path, default=Path("logs/benchmarks/curation_replication"))
    p.add_argument("--clusters", type=int, nargs="+", default=[20, 50, 100, 200, 400])
    p.add_argument("--min-queries", type=int, nargs="+", default=[3, 1, 0])
    p.add_argument("--sample-k", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    a = p.parse_args()
    ev = a.work / "evaluation"
    retrieval_stage = ev / "embed_pool_retrieval"
    pool = load_embeddings(retrieval_stage if retrieval_stage.is_dir() else ev / "embed_pool")
    queries = load_embeddings(ev / "embed_query_fashion_mnist")
    rows = np.flatnonzero(np.load(ev / "relative_dedup" / "keep.npy"))
    vectors = np.asarray(pool.vectors)[rows]
    kept = pool.index.select(rows)
    images = ManifestImageSource(kept, os.environ.get("DATA_DIR", "data"))
    labels = np.array([images.label(i) for i in range(len(kept))])
    q_images = ManifestImageSource(queries.index, os.environ.get("DATA_DIR", "data"))
    table = [
        describe("queries", queries.index, [q_images.label(i) for i in range(len(queries))]),
        describe("pool after dedup", kept, labels),
    ]
    settings = SearchSettings(threads=1, seed=0)
    for n_clusters in a.clusters:
        clusters = cluster_pool(vectors, n_clusters, 20, settings)
        for m in a.min_queries:
            r = cluster_retrieval(clusters, queries.vectors, m, 10_000, None, "q", settings)
            table.append(describe(f"cluster, {n_clusters} clusters, > {m} queries",
                                  kept.select(r.ids), labels[r.ids]))  # fmt: skip
    for k in a.sample_k:
        r = sample_retrieval(vectors, queries.vectors, k, None, "q", settings)
        table.append(describe(f"sample, k = {k}", kept.select(r.ids), labels[r.ids]))
    header = ["retrieval", "images", "per source", "Fashion-MNIST classes 0-9",
              "smallest class / uniform share"]  # fmt: skip
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in table:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
