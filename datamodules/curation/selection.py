"""The stages after embedding (main process only): dedup, retrieval and the curated manifest.

``run_selection`` takes the ``curation`` config (a mapping: ``search``, ``self_dedup``,
``relative_dedup``, ``retrieval``) and the embeddings by role: ``pool``, ``pool_retrieval``,
``eval:<name>``, ``query:<name>``. Every stage's params include its inputs' params, so a
finished stage is never reused for changed inputs (see :func:`run_stage`).
"""

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.curation.dedup import relative_dedup, self_dedup
from datamodules.curation.embed import Embeddings
from datamodules.curation.errors import CurationError
from datamodules.curation.knn_graph import SearchSettings, check_same_dim
from datamodules.curation.manifest import merge_manifests, read_manifest, write_manifest
from datamodules.curation.replication import (
    count_test_copies_left,
    load_ground_truth,
    self_dedup_scores,
)
from datamodules.curation.retrieval import (
    PoolClusters,
    cluster_pool,
    cluster_retrieval,
    sample_retrieval,
)
from datamodules.curation.stages import run_stage

RESULT_PARAMS = ("ivf_min_size", "nlist", "nprobe", "seed")  # search settings that change results


@dataclass(frozen=True)
class SelectionOutputs:
    """Masks over the pool's embedding rows, the curated manifest and summary metrics."""

    self_keep: np.ndarray
    self_components: np.ndarray
    keep: np.ndarray
    manifest: Path
    metrics: dict[str, float]


def _plain(cfg: Any) -> dict[str, Any]:
    try:
        from omegaconf import OmegaConf

        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ValueError:
        return dict(cfg)


def run_selection(
    c: Mapping[str, Any], work: Path, emb: Mapping[str, Embeddings], as_is: Mapping[str, Path]
) -> SelectionOutputs:
    """Self-dedup → relative dedup → retrieval per query set → curated manifest."""
    search = _plain(c["search"])
    settings = SearchSettings(**search)
    base = {k: search[k] for k in RESULT_PARAMS if k in search}
    pool = emb["pool"]
    p_self = {**_plain(c["self_dedup"]), "search": base, "pool": pool.meta.get("params")}
    s = run_stage(work, "self_dedup", lambda d: _self_dedup(d, pool, p_self, settings), p_self)
    evals = {k.split(":", 1)[1]: v for k, v in emb.items() if k.startswith("eval:")}
    p_rel = {**_plain(c["relative_dedup"]), "search": base, "self_dedup": p_self,
             "eval": {n: e.meta.get("params") for n, e in evals.items()}}  # fmt: skip
    self_keep = np.load(s.path / "keep.npy")
    r = run_stage(work, "relative_dedup",
                  lambda d: _relative(d, pool, self_keep, evals, p_rel, settings), p_rel)  # fmt: skip
    keep = np.load(r.path / "keep.npy")
    retrieved, r_meta, r_params = _retrieve_all(c, work, emb, keep, p_rel, settings)
    p_out = {"retrieved": r_params, "as_is": {n: str(p) for n, p in as_is.items()},
             "relative_dedup": p_rel}  # fmt: skip
    m = run_stage(work, "manifest", lambda d: _curated(d, retrieved, as_is, pool, keep), p_out)
    metrics = {
        "pool/images": float(len(pool)),
        "self_dedup/kept": float(s.metadata["kept"]),
        "relative_dedup/kept": float(r.metadata["kept"]),
        "relative_dedup/touched": float(r.metadata["touched"]),
        **{f"retrieval/{n}": float(v) for n, v in r_meta.items()},
        "curated/images": float(m.metadata["images"]),
    }
    return SelectionOutputs(
        self_keep, np.load(s.path / "components.npy"), keep, m.path / "curated.csv", metrics
    )


def _self_dedup(d: Path, pool: Embeddings, p: dict, settings: SearchSettings) -> dict:
    res = self_dedup(pool.vectors, p["k"], p["threshold"], settings)
    np.save(d / "keep.npy", res.keep)
    np.save(d / "components.npy", res.components)
    return {"images": len(res.keep), "kept": res.num_kept, "components": res.num_components,
            "edges": res.num_edges}  # fmt: skip


def _relative(
    d: Path, pool: Embeddings, self_keep: np.ndarray, evals: Mapping[str, Embeddings], p: dict,
    settings: SearchSettings,
) -> dict:  # fmt: skip
    rows = np.flatnonzero(self_keep)
    keep, touched = self_keep.copy(), 0
    if evals:
        for name, e in evals.items():
            check_same_dim(pool.vectors, e.vectors, "the pool", f"evaluation set {name!r}")
        reference = np.concatenate([np.asarray(e.vectors) for e in evals.values()])
        res = relative_dedup(pool.vectors[rows], reference, p["k"], p["threshold"], settings)
        keep[:] = False
        keep[rows[res.keep]] = True
        touched = res.num_touched
    np.save(d / "keep.npy", keep)
    return {"images": len(rows), "kept": int(keep.sum()), "touched": touched}


def _method(r: Mapping[str, Any], n_queries: int) -> str:
    method = r["method"]
    if method == "auto":
        return "sample" if n_queries > r["sample_min_queries"] else "cluster"
    if method not in ("sample", "cluster"):
        raise CurationError(f"retrieval.method must be auto, sample or cluster, got {method!r}")
    return method


def _retrieve_all(
    c: Mapping[str, Any], work: Path, emb: Mapping[str, Embeddings], keep: np.ndarray,
    p_rel: dict, settings: SearchSettings,
) -> tuple[dict[str, Path], dict[str, int], dict[str, dict]]:  # fmt: skip
    """One ``retrieve_<name>`` stage per query set (after ``pool_clusters`` if needed).

    Returns the retrieved manifests, counts and stage params, by query set name.
    """
    r = _plain(c["retrieval"])
    pool = emb["pool_retrieval"]
    if not np.array_equal(pool.rows, emb["pool"].rows):
        raise CurationError("the two pool embeddings (dedup, retrieval) cover different images")
    rows = np.flatnonzero(keep)
    queries = {k.split(":", 1)[1]: v for k, v in emb.items() if k.startswith("query:")}
    if queries and len(rows) == 0:
        raise CurationError("no pool images are left after deduplication: nothing to retrieve")
    methods = {n: _method(r, len(q)) for n, q in queries.items()}
    base = {"relative_dedup": p_rel, "pool": pool.meta.get("params")}
    clusters = None
    if "cluster" in methods.values():
        p_cl = {**base, "n_clusters": r["cluster"]["n_clusters"], "niter": r["cluster"]["niter"]}
        cl = run_stage(
            work, "pool_clusters", lambda d: _clusters(d, pool, rows, p_cl, settings), p_cl
        )
        clusters = (PoolClusters(*(np.load(cl.path / f"{a}.npy") for a in
                    ("centroids", "assignment", "similarity"))), p_cl)  # fmt: skip
    out, counts, params = {}, {}, {}
    for name, q in queries.items():
        m = methods[name]
        p = {**(base if m == "sample" else clusters[1]), "method": m, **r[m],
             "queries": q.meta.get("params")}  # fmt: skip
        run = partial(_retrieve, name=name, q=q, method=m, p=r[m], pool=pool, rows=rows,
                      clusters=clusters, settings=settings)  # fmt: skip
        st = run_stage(work, f"retrieve_{name}", run, p)
        out[name], counts[name], params[name] = (
            st.path / "retrieved.csv",
            st.metadata["retrieved"],
            p,
        )
    return out, counts, params


def _clusters(d: Path, pool: Embeddings, rows: np.ndarray, p: dict, s: SearchSettings) -> dict:
    cl = cluster_pool(pool.vectors[rows], p["n_clusters"], p["niter"], s)
    for name in ("centroids", "assignment", "similarity"):
        np.save(d / f"{name}.npy", getattr(cl, name))
    return {"clusters": len(cl.centroids), "images": len(rows)}


def _retrieve(
    d: Path, name: str, q: Embeddings, method: str, p: dict, pool: Embeddings, rows: np.ndarray,
    clusters: tuple[PoolClusters, dict] | None, settings: SearchSettings,
) -> dict:  # fmt: skip
    if method == "sample":
        res = sample_retrieval(pool.vectors[rows], q.vectors, p["k"], p["cap"], name, settings)
    else:
        res = cluster_retrieval(clusters[0], q.vectors, p["min_queries"], p["per_cluster"],
                                p["cap"], name, settings)  # fmt: skip
    write_manifest(d / "retrieved.csv", pool.index.select(rows[res.ids], res.reasons))
    return {"method": method, "retrieved": len(res.ids), "before_collisions": res.num_before_dedup,
            "before_cap": res.num_before_cap}  # fmt: skip


def _curated(
    d: Path, retrieved: Mapping[str, Path], as_is: Mapping[str, Path], pool: Embeddings,
    keep: np.ndarray,
) -> dict:  # fmt: skip
    """Union of the retrieved and as-is images; without query sets, the deduplicated pool."""
    parts = [read_manifest(p) for p in retrieved.values()]
    for name, path in as_is.items():
        m = read_manifest(path)
        parts.append(m.select(np.arange(len(m)), f"as_is:{name}"))
    if not parts:
        parts = [pool.index.select(np.flatnonzero(keep), "deduplicated")]
    curated = merge_manifests(parts)
    write_manifest(d / "curated.csv", curated)
    names, counts = np.unique(curated.source.astype(str), return_counts=True)
    return {
        "images": len(curated),
        "per_source": dict(zip(names.tolist(), counts.tolist(), strict=True)),
    }


def score_replication(gt_path: Path, pool: Embeddings, out: SelectionOutputs) -> dict[str, float]:
    """Replication scores: dedup recall/precision, test copies left, Fashion-MNIST share."""
    gt = load_ground_truth(gt_path)
    position = np.full(int(pool.rows.max()) + 1, -1)
    position[pool.rows] = np.arange(len(pool.rows))
    dup, orig = position[gt["duplicate_rows"]], position[gt["original_rows"]]
    embedded = (dup >= 0) & (orig >= 0)
    scores = self_dedup_scores(out.self_components, out.self_keep, dup[embedded], orig[embedded])
    for kind, mask in (("exact", ~gt["augmented"]), ("augmented", gt["augmented"])):
        same = (
            out.self_components[dup[mask & embedded]] == out.self_components[orig[mask & embedded]]
        )
        scores[f"dedup/recall_{kind}"] = float(same.mean()) if same.size else float("nan")
    copies = position[gt["test_copy_rows"]]
    left = count_test_copies_left(np.flatnonzero(out.keep), copies[copies >= 0])
    scores["relative_dedup/test_copies_left"] = float(left)
    curated = read_manifest(out.manifest)
    scores["retrieval/fashion_share"] = (
        float(np.mean(curated.source == "fashion_mnist")) if len(curated) else 0.0
    )
    return scores
