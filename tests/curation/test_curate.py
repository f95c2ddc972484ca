"""experiments/curate.py end to end on a tiny replication pool, resume and bad input."""

from pathlib import Path

import numpy as np
import pytest
from helpers import has_real_data

from datamodules.curation.manifest import Manifest, read_manifest, write_manifest
from experiments import curate as curate_module
from experiments.curate import curate
from experiments.errors import UserFacingError

TINY = [
    "curation/backbone=tiny_vit",
    "curation.replication.mnist=100",
    "curation.replication.fashion_mnist=100",
    "curation.replication.exact_duplicates=10",
    "curation.replication.augmented_duplicates=10",
    "curation.replication.test_copies=10",
    "curation.replication.noise=10",
    "curation.replication.queries=60",
    "curation.replication.eval=50",
    "curation.retrieval.cluster.n_clusters=8",
    "curation.retrieval.cluster.per_cluster=15",
    "curation.search.threads=1",
    # a random ViT maps all images to cos > 0.3 (median 0.94): the paper's thresholds would
    # merge the whole pool, so this smoke test uses near-copy thresholds
    "curation.self_dedup.threshold=0.9999",
    "curation.relative_dedup.threshold=0.9999",
]
STAGES = ["replication", "embed_pool", "embed_eval_fashion_mnist_test",
          "embed_query_fashion_mnist", "self_dedup", "relative_dedup", "pool_clusters",
          "retrieve_fashion_mnist", "manifest"]  # fmt: skip


@pytest.mark.skipif(
    not (has_real_data("MNIST") and has_real_data("FashionMNIST")),
    reason="needs MNIST and Fashion-MNIST under DATA_DIR",
)
def test_curate_end_to_end_then_resume(make_cfg, tmp_path: Path, monkeypatch) -> None:
    cfg = make_cfg(TINY, config_name="curate")
    metrics = curate(cfg)
    for stage in STAGES:
        assert (tmp_path / stage / "done.json").is_file(), stage
    assert metrics["pool/images"] == 240
    assert metrics["dedup/recall_exact"] == 1.0
    assert metrics["relative_dedup/test_copies_left"] == 0
    assert metrics["relative_dedup/kept"] <= metrics["self_dedup/kept"] - 10
    curated = read_manifest(tmp_path / "manifest" / "curated.csv")
    assert len(curated) == metrics["curated/images"] > 0
    assert all(r.startswith("fashion_mnist:cluster(") for r in curated.reason)
    assert (tmp_path / "summary.json").is_file()

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    for name in ("embed_images", "build_replication"):
        monkeypatch.setattr(curate_module, name, must_not_run)
    monkeypatch.setattr("datamodules.curation.selection.self_dedup", must_not_run)
    assert curate(cfg) == metrics  # every stage skipped, same result


def test_empty_pool_is_a_user_error(make_cfg, tmp_path: Path) -> None:
    pool = write_manifest(tmp_path / "pool.csv", Manifest({}, [], []))
    cfg = make_cfg(["curation.replication.enabled=false", f"curation.inputs.pool={pool}"],
                   config_name="curate")  # fmt: skip
    with pytest.raises(UserFacingError, match="no images to embed"):
        curate(cfg)


def test_query_dimension_mismatch_is_a_user_error(make_cfg, tmp_path: Path) -> None:
    noise = {"n": {"kind": "noise", "count": 40, "shape": [1, 28, 28], "seed": 0}}
    pool = write_manifest(tmp_path / "in" / "pool.csv", Manifest(noise, ["n"] * 30, range(30)))
    queries = write_manifest(tmp_path / "in" / "q.csv", Manifest(noise, ["n"] * 10, range(30, 40)))
    cfg = make_cfg(
        ["curation.replication.enabled=false", f"curation.inputs.pool={pool}",
         f"+curation.inputs.queries.q={queries}", "curation.retrieval.method=sample",
         "curation.backbone.size=4", "+curation/backbone@curation.retrieval_backbone=pixels",
         "curation.retrieval_backbone.size=8"],
        config_name="curate",
    )  # fmt: skip
    # consistent: the pool is re-embedded with the retrieval backbone (192-d), like the queries
    assert curate(cfg)["retrieval/q"] > 0
    # inconsistent: a retrieval pool embedding of another dimension than the queries'
    work = Path(cfg.work_dir)
    vectors = np.load(work / "embed_pool_retrieval" / "embeddings.npy")
    np.save(work / "embed_pool_retrieval" / "embeddings.npy", vectors[:, :48].copy())
    for stage in ("retrieve_q", "manifest"):
        for f in (work / stage).iterdir():
            f.unlink()
        (work / stage).rmdir()
    with pytest.raises(UserFacingError, match="pool has dim 48, query set 'q' has dim 192"):
        curate(cfg)


def test_paper_config_composes(make_cfg) -> None:
    cfg = make_cfg([], config_name="curate")  # thresholds calibrated for pixels: relative lower
    assert 0.6 < cfg.curation.relative_dedup.threshold < cfg.curation.self_dedup.threshold < 1
    paper = make_cfg(["curation=paper"], config_name="curate")
    assert paper.curation.self_dedup.threshold == 0.6
    assert paper.curation.relative_dedup.threshold == 0.45
    assert paper.curation.retrieval.cluster.n_clusters == 100_000
    assert paper.curation.retrieval.cluster.per_cluster == 10_000
    assert paper.curation.retrieval.cluster.cap == 1_000_000
    assert paper.curation.self_dedup.k == 64 and not paper.curation.replication.enabled
