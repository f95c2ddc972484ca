"""Curation at scale: embedding throughput, and dedup + retrieval time and peak memory vs N.

    python experiments/benchmarks/curation_scale.py --n 100000 1000000 --dim 384
    python experiments/benchmarks/curation_scale.py --n 10000 100000 --skip-embed

1. Embeddings/s of backbones (a tiny ViT at 28 px; ViT-S/14 at 224 px, random weights) through
   ``embed_images`` (Lightning predict, CPU) on noise images.
2. For each N: N random unit vectors (dim 384) with 1 % planted near-duplicates (cos ≈ 0.95)
   and N/100 queries. Self-dedup (k = 64, cos > 0.6, components), sample-based retrieval
   (k = 4) and cluster-based retrieval (N/1000 clusters), with faiss (``datamodules/curation``:
   IndexFlatIP below ``--ivf-min-size``, IVF above; k-means) and with scikit-learn
   (``NearestNeighbors(metric="cosine", algorithm="brute", n_jobs=2)``, ``KMeans``).
   Every measurement runs in a fresh process: peak memory is its ``ru_maxrss`` minus its RSS
   before the operation. sklearn runs up to ``--sklearn-max-n-dedup`` / ``-retrieval``; larger
   N are extrapolated (marked ``extrap.``) from the largest measured N with an N² cost (brute
   search of N queries, or N/100 queries, or k-means into N/1000 clusters, over N vectors).
3. Print one table with the growth of time from one N to the next (ratio and exponent).
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
from datamodules.curation.knn_graph import SearchSettings, first_of_each_component
from datamodules.curation.knn_graph import graph_components as components
from datamodules.curation.retrieval import (
    PoolClusters,
    cluster_pool,
    cluster_retrieval,
    sample_retrieval,
)

OPS = ("self_dedup", "sample_retrieval", "cluster_retrieval")


def make_data(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors ``(n, dim)`` float32 whose last 1 % are near-duplicates of earlier rows,
    the original rows of those duplicates, and ``max(100, n // 100)`` queries."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, dim), np.float32)
    for s in range(0, n, 65536):  # float32 blocks: no float64 copy of the whole array
        x[s : s + 65536] = rng.standard_normal((min(65536, n - s), dim), dtype=np.float32)
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


def _sklearn_knn(x: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    with threadpool_limits(1):  # n_jobs=2 workers, one BLAS thread each: 2 cores in all
        nn = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute", n_jobs=2)
        dist, ids = nn.fit(x).kneighbors(queries)
    return 1.0 - dist, ids


def _dedup(impl: str, x: np.ndarray, originals: np.ndarray, a) -> float:
    """Self-dedup; returns the recall of planted duplicates (same component as the original)."""
    if impl == "faiss":
        settings = SearchSettings(ivf_min_size=a.ivf_min_size, threads=a.threads)
        labels = self_dedup(x, a.k, 0.6, settings).components
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
        settings = SearchSettings(ivf_min_size=a.ivf_min_size, threads=a.threads)
        return float(len(sample_retrieval(x, queries, 4, None, "q", settings).ids))
    _, ids = _sklearn_knn(x, queries, 4)
    return float(len(np.unique(ids)))


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
    start = time.perf_counter()
    if op == "self_dedup":
        check = _dedup(impl, x, originals, a)
    elif op == "sample_retrieval":
        check = _sample(impl, x, queries, a)
    else:
        check = _cluster(impl, x, queries, a)
    seconds = time.perf_counter() - start
    peak = (
        _status_mib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {"seconds": seconds, "peak_extra_mib": peak - before, "peak_mib": peak, "check": check}


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


def growth_rows(results: dict, ns: list[int], a) -> list[list[str]]:
    """Table rows: measured or extrapolated time, memory, growth ratio and exponent."""
    rows = []
    for op in OPS:
        for impl in ("faiss", "sklearn"):
            prev = None
            for n in ns:
                r = results.get((op, impl, n))
                if r is None:
                    measured = [m for m in ns if (op, impl, m) in results and m < n]
                    if impl != "sklearn" or not measured:
                        continue
                    base = results[(op, impl, measured[-1])]
                    r = {"seconds": base["seconds"] * (n / measured[-1]) ** 2, "extrap": True}
                sec = r["seconds"]
                ratio = sec / prev[1] if prev else float("nan")
                expo = math.log(ratio) / math.log(n / prev[0]) if prev else float("nan")
                mem = "-" if r.get("extrap") else f"{r['peak_extra_mib']:.0f} / {r['peak_mib']:.0f}"
                check = "-" if r.get("extrap") else f"{r['check']:.4g}"
                time_s = f"{sec:.2f}" + (" (extrap.)" if r.get("extrap") else "")
                rows.append(
                    [op, impl, f"{n:.0e}", time_s, mem, f"{ratio:.1f}", f"{expo:.2f}", check]
                )
                prev = (n, sec)
    return rows


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
    p.add_argument("--sklearn-max-n-dedup", type=int, default=100_000)
    p.add_argument("--sklearn-max-n-retrieval", type=int, default=1_000_000)
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
                print(f"  {op} {impl} N={n}: {r['seconds']:.2f}s", flush=True)
    header = ["op", "impl", "N", "time s", "peak MiB extra / total", "× prev N", "exponent",
              "check (dedup recall / retrieved)"]  # fmt: skip
    print_table(header, growth_rows(results, ns, a))


if __name__ == "__main__":
    main()
