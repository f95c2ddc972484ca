"""Curation at scale: embedding throughput, and dedup + retrieval time and peak memory vs N.

    python experiments/benchmarks/curation_scale.py --n 100000 1000000 --dim 384
    python experiments/benchmarks/curation_scale.py --n 10000 100000 --skip-embed

1. Embeddings/s of backbones (a tiny ViT at 28 px; ViT-S/14 at 224 px, random weights) through
   ``embed_images`` (Lightning predict, CPU) on noise images.
2. For each N: N unit vectors (dim 384) in N/1000 "concept" clusters (cosine to the centre
   ≈ 0.55, between members ≈ 0.31: like real embeddings, not uniform noise, on which a top-k
   is meaningless), 1 % planted near-duplicates (cos ≈ 0.95) and N/100 queries. Self-dedup
   (k = 64, cos > 0.6, components), sample-based retrieval (k = 4) and cluster-based retrieval
   (N/1000 clusters), with faiss (``datamodules/curation``: IndexFlatIP below
   ``--ivf-min-size``, IndexIVFFlat above; k-means) and with scikit-learn
   (``NearestNeighbors(metric="cosine", algorithm="brute", n_jobs=2)``, ``KMeans``).
   Every measurement runs in a fresh process: wall and CPU seconds (the machine is shared, so
   CPU/threads is the load-free estimate), peak RSS (reset before the operation when Linux
   allows). sklearn runs up to ``--sklearn-max-n-dedup`` / ``-retrieval``; larger N are
   extrapolated (marked ``extrap.``) with the growth exponent measured between its two largest
   N (2 if only one was measured).
3. For IVF sizes, the recall of the IVF k-NN graph against exact search on ``--recall-queries``
   pool vectors: recall@k (top-k sets) and of the edges above the dedup threshold.
4. Print one table with the growth of time from one N to the next (ratio and exponent).
"""

import argparse
import math
import os
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from sklearn.cluster import KMeans
from sklearn.neighbors import NearestNeighbors
from threadpoolctl import threadpool_limits

from datamodules.curation.dedup import self_dedup
from datamodules.curation.knn_graph import SearchSettings, build_index, first_of_each_component
from datamodules.curation.knn_graph import graph_components as components
from datamodules.curation.retrieval import (
    PoolClusters,
    cluster_pool,
    cluster_retrieval,
    sample_retrieval,
)

OPS = ("self_dedup", "sample_retrieval", "cluster_retrieval")


def make_data(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors ``(n, dim)`` float32 in ``n // 1000`` clusters whose last 1 % are
    near-duplicates of earlier rows, the original rows of those duplicates, and
    ``max(100, n // 100)`` queries."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 1000), dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.empty((n, dim), np.float32)
    for s in range(0, n, 65536):  # float32 blocks: no float64 copy of the whole array
        m = min(65536, n - s)
        noise = rng.standard_normal((m, dim), dtype=np.float32) * (1.5 / math.sqrt(dim))
        x[s : s + m] = centres[rng.integers(0, len(centres), m)] + noise
    n_dup = n // 100
    originals = rng.choice(n - n_dup, size=n_dup, replace=False)
    noise = rng.standard_normal((n_dup, dim), dtype=np.float32) * (0.33 / math.sqrt(dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[n - n_dup :] = x[originals] + noise
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    n_q = max(100, n // 100)
    queries = x[rng.choice(n, size=n_q, replace=False)] + 0.02 * rng.standard_normal(
        (n_q, dim), dtype=np.float32
    )
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return x, originals, queries


def _status_mib(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process from /proc, in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> bool:
    """Reset this process's peak RSS (Linux ≥ 4.0: ``5`` to clear_refs); False if not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _sklearn_knn(x: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    with threadpool_limits(1):  # n_jobs=2 workers, one BLAS thread each: 2 cores in all
        nn = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute", n_jobs=2)
        dist, ids = nn.fit(x).kneighbors(queries)
    return 1.0 - dist, ids


def _dedup(impl: str, x: np.ndarray, originals: np.ndarray, a) -> float:
    """Self-dedup; returns the recall of planted duplicates (same component as the original)."""
    if impl == "faiss":
        labels = self_dedup(x, a.k, 0.6, _settings(a)).components
    else:
        sims, ids = _sklearn_knn(x, x, a.k + 1)
        q = np.broadcast_to(np.arange(len(x))[:, None], ids.shape)
        keep = (sims > 0.6) & (ids != q)
        labels = components(len(x), q[keep], ids[keep])
        first_of_each_component(labels)  # the kept images, as self_dedup computes them
    dups = np.arange(len(x) - len(originals), len(x))
    return float(np.mean(labels[dups] == labels[originals]))


def _sample(impl: str, x: np.ndarray, queries: np.ndarray, a) -> float:
    """Sample-based retrieval (k = 4); returns the number of unique retrieved images."""
    if impl == "faiss":
        return float(len(sample_retrieval(x, queries, 4, None, "q", _settings(a)).ids))
    _, ids = _sklearn_knn(x, queries, 4)
    return float(len(np.unique(ids)))


def _settings(a) -> SearchSettings:
    return SearchSettings(ivf_min_size=a.ivf_min_size, nprobe=a.nprobe, threads=a.threads)


def ivf_recall(n: int, a) -> dict[str, float]:
    """Recall of the IVF k-NN graph against exact search, on ``a.recall_queries`` pool vectors.

    recall@k: share of the exact top-(k+1) (self included) found; edge recall: share of the
    exact edges with cos > 0.6 found (what self-dedup uses).
    """
    faiss.omp_set_num_threads(a.threads)
    x, _, _ = make_data(n, a.dim)
    rows = np.random.default_rng(1).choice(n, size=a.recall_queries, replace=False)
    settings = SearchSettings(ivf_min_size=0, nprobe=a.nprobe, threads=a.threads)
    exact, approx = faiss.IndexFlatIP(a.dim), build_index(x, settings)
    exact.add(x)
    s_e, i_e = exact.search(x[rows], a.k + 1)
    _, i_a = approx.search(x[rows], a.k + 1)
    found = [np.isin(e, f) for e, f in zip(i_e, i_a, strict=True)]
    edges = np.concatenate([h[s > 0.6] for h, s in zip(found, s_e, strict=True)])
    return {
        "recall_at_k": float(np.mean(np.concatenate(found))),
        "edge_recall": float(edges.mean()) if edges.size else float("nan"),
        "edges": float(edges.size),
        "nlist": float(approx.nlist),
    }


def _cluster(impl: str, x: np.ndarray, queries: np.ndarray, a) -> float:
    """Cluster-based retrieval (N/1000 clusters); returns the number of retrieved images."""
    settings = SearchSettings(threads=a.threads)
    n_clusters = max(2, len(x) // a.points_per_cluster)
    if impl == "faiss":
        clusters = cluster_pool(x, n_clusters, a.niter, settings)
    else:
        with threadpool_limits(a.threads):
            km = KMeans(n_clusters, n_init=1, max_iter=a.niter, random_state=0).fit(x)
        centroids = km.cluster_centers_ / np.linalg.norm(km.cluster_centers_, axis=1, keepdims=True)
        sims = np.einsum("nd,nd->n", x, centroids[km.labels_])
        clusters = PoolClusters(centroids.astype(np.float32), km.labels_.astype(np.int64), sims)
    res = cluster_retrieval(clusters, queries, 3, 10_000, 1_000_000, "q", settings)
    return float(len(res.ids))


def measure(op: str, impl: str, n: int, a) -> dict[str, Any]:
    """Run one operation in this (fresh) process: seconds, peak extra / total MiB, check value."""
    faiss.omp_set_num_threads(a.threads)
    x, originals, queries = make_data(n, a.dim)
    before = _status_mib("VmRSS")
    reset = _reset_peak()  # else ru_maxrss also counts the data generation's peak
    load = os.getloadavg()[0]
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    if op == "self_dedup":
        check = _dedup(impl, x, originals, a)
    elif op == "sample_retrieval":
        check = _sample(impl, x, queries, a)
    else:
        check = _cluster(impl, x, queries, a)
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
    peak = (
        _status_mib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {"seconds": seconds, "cpu": cpu, "peak_extra_mib": peak - before, "peak_mib": peak,
            "check": check, "load": (load + os.getloadavg()[0]) / 2}  # fmt: skip


def embed_throughput(backbone_name: str, n_images: int, batch_size: int) -> float:
    """Images per second of ``embed_images`` with a random-weight backbone on CPU."""
    import tempfile

    import torch

    from datamodules.curated_datamodule import ManifestImageSource
    from datamodules.curation.embed import ResizeNormalize, embed_images
    from datamodules.curation.manifest import Manifest
    from lightning_modules.components.vit import DINOv2Backbone

    if backbone_name == "tiny":
        backbone, size = DINOv2Backbone(img_size=28, patch_size=4, embed_dim=64, depth=2,
                                        num_heads=2, layerscale_init=None), 28  # fmt: skip
    else:
        backbone, size = DINOv2Backbone("vit_small_patch14_dinov2", img_size=224), 224
    spec = {"noise": {"kind": "noise", "count": n_images, "shape": [3, size, size]}}
    images = ManifestImageSource(Manifest(spec, ["noise"] * n_images, range(n_images)))
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        embed_images(backbone, images, Path(out), ResizeNormalize(size), batch_size, 0,
                     {"accelerator": "cpu", "devices": 1})  # fmt: skip
        return n_images / (time.perf_counter() - start)


def _in_fresh_process(fn, *args):
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def _extrapolate(results: dict, op: str, impl: str, n: int, ns: list[int]) -> dict | None:
    """Seconds at ``n`` from the two largest measured N below it (measured exponent)."""
    measured = [m for m in ns if (op, impl, m) in results and m < n]
    if not measured:
        return None
    last = results[(op, impl, measured[-1])]
    expo = 2.0
    if len(measured) > 1:
        first = results[(op, impl, measured[-2])]
        expo = math.log(last["cpu"] / first["cpu"]) / math.log(measured[-1] / measured[-2])
    scale = (n / measured[-1]) ** expo
    return {"seconds": last["seconds"] * scale, "cpu": last["cpu"] * scale, "extrap": expo}


def result_table(results: dict, ns: list[int]) -> tuple[list[list[str]], dict]:
    """Table rows (time, CPU, memory, growth from the previous N) and totals by (impl, N)."""
    rows, totals = [], {}
    for op in OPS:
        for impl in ("faiss", "sklearn"):
            prev = None
            for n in ns:
                r = results.get((op, impl, n))
                if r is None and impl == "sklearn":
                    r = _extrapolate(results, op, impl, n, ns)
                if r is None:
                    continue
                extrap = "extrap" in r
                tot = totals.setdefault((impl, n), {"cpu": 0.0, "seconds": 0.0, "extrap": False})
                tot["cpu"] += r["cpu"]
                tot["seconds"] += r["seconds"]
                tot["extrap"] |= extrap
                growth = ["-", "-"]  # the first N measured has no previous N to grow from
                if prev:
                    ratio = r["cpu"] / prev[1]
                    growth = [f"{ratio:.1f}", f"{math.log(ratio) / math.log(n / prev[0]):.2f}"]
                mark = f" (extrap., N^{r['extrap']:.2f})" if extrap else ""
                rows.append([
                    op, impl, f"{n:.0e}", f"{r['seconds']:.1f}{mark}", f"{r['cpu']:.1f}{mark}",
                    "-" if extrap else f"{r['load']:.1f}",
                    "-" if extrap else f"{r['peak_extra_mib']:.0f} / {r['peak_mib']:.0f}",
                    *growth, "-" if extrap else f"{r['check']:.4g}",
                ])  # fmt: skip
                prev = (n, r["cpu"])
    return rows, totals


def print_table(header: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ivf-min-size", type=int, default=1_000_000)
    p.add_argument("--nprobe", type=int, default=SearchSettings.nprobe)
    p.add_argument("--recall-queries", type=int, default=1000)
    p.add_argument(
        "--recall-all", action="store_true", help="IVF recall at every N, not only IVF sizes"
    )
    p.add_argument("--sklearn-max-n-dedup", type=int, default=100_000)
    p.add_argument("--sklearn-max-n-retrieval", type=int, default=100_000)
    p.add_argument("--points-per-cluster", type=int, default=1000)
    p.add_argument("--niter", type=int, default=10)
    p.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS)
    p.add_argument("--embed-backbones", nargs="*", default=["tiny", "vits14"])
    p.add_argument("--embed-images", type=int, default=256)
    p.add_argument("--skip-embed", action="store_true")
    a = p.parse_args()
    os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[2]))
    print(f"cpu cores: {os.cpu_count()}, threads: {a.threads}, load: {os.getloadavg()}")
    if not a.skip_embed:
        rows = [[name, f"{_in_fresh_process(embed_throughput, name, a.embed_images, 64):.1f}"]
                for name in a.embed_backbones]  # fmt: skip
        print_table(["backbone (random weights, CPU)", "images/s"], rows)
    ns, results = sorted(a.n), {}
    for n in ns:
        for op in a.ops:
            for impl in ("faiss", "sklearn"):
                limit = a.sklearn_max_n_dedup if op == "self_dedup" else a.sklearn_max_n_retrieval
                if impl == "sklearn" and n > limit:
                    continue
                results[(op, impl, n)] = r = _in_fresh_process(measure, op, impl, n, a)
                print(f"  {op} {impl} N={n}: {r['seconds']:.1f} s wall, {r['cpu']:.1f} s CPU, "
                      f"load {r['load']:.1f}", flush=True)  # fmt: skip
    header = ["op", "impl", "N", "wall s", "CPU s", "load avg", "peak RSS MiB extra / total",
              "× prev N (CPU)", "exponent", "check (dedup recall / retrieved)"]  # fmt: skip
    rows, totals = result_table(results, ns)
    print_table(header, rows)
    total_rows = []
    for n in ns:
        f, k = totals.get(("faiss", n)), totals.get(("sklearn", n))
        if f is None:
            continue
        sklearn_cols = ["-", "-"]  # sklearn not measured (or extrapolated) at this N
        if k is not None:
            extrap = " (extrap.)" if k["extrap"] else ""
            sklearn_cols = [f"{k['cpu']:.1f}", f"{k['cpu'] / f['cpu']:.1f}{extrap}"]
        total_rows.append([f"{n:.0e}", f"{f['seconds']:.1f}", f"{f['cpu']:.1f}",
                           f"{f['cpu'] / a.threads:.1f}", *sklearn_cols])  # fmt: skip
    print_table(["N", "faiss wall s", "faiss CPU s", f"faiss CPU s / {a.threads} (idle-machine wall)",
                 "sklearn CPU s", "sklearn / faiss (CPU)"], total_rows)  # fmt: skip
    ivf_ns = [n for n in ns if n >= a.ivf_min_size or a.recall_all]
    if ivf_ns:
        rows = []
        for n in ivf_ns:
            r = _in_fresh_process(ivf_recall, n, a)
            rows.append([f"{n:.0e}", f"{r['nlist']:.0f}", str(a.nprobe), f"{r['recall_at_k']:.4f}",
                         f"{r['edge_recall']:.4f} ({r['edges']:.0f} edges)"])  # fmt: skip
        print_table(["N", "nlist", "nprobe", f"recall@{a.k + 1} vs exact", "edge (cos > 0.6) recall"],
                    rows)  # fmt: skip


if __name__ == "__main__":
    main()
