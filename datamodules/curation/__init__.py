"""LVD-142M-style data curation as resumable stages (spec §8, decision D8).

One concept per module; stages are plain functions over embedding arrays and manifests:

- ``sources``: where a manifest row's image comes from (torchvision split, npy, noise, folder).
- ``manifest``: ``(source, index, reason)`` lists on disk, with reader, writer and union.
- ``embed``: any backbone → L2-normalised float32 memory-mapped embeddings (Lightning predict).
- ``knn_graph``: faiss k-NN search (flat or IVF by size), thresholded edges, components.
- ``dedup``: self-dedup (cos > 0.6) and relative dedup against evaluation sets (cos > 0.45).
- ``retrieval``: sample-based (k-NN per query) and cluster-based (k-means) retrieval.
- ``stages``: skip-if-done, atomic commit of each stage's directory.
- ``selection``: the stages after embedding, chained (used by ``experiments/curate.py``).
- ``replication``: the MNIST / Fashion-MNIST pool with planted duplicates, and its scores.

Modules importing faiss (``knn_graph``, ``dedup``, ``retrieval``, ``selection``) need the
``curate`` extra; this package's ``__init__`` imports nothing, so the manifest dataset in
``datamodules/curated_datamodule.py`` works without faiss.
"""
