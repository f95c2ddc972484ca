"""The replication set-up plants what its ground truth says; its scores are right."""

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SHARED_DATA, has_real_data

from datamodules.curated_datamodule import ManifestImageSource
from datamodules.curation.errors import CurationError
from datamodules.curation.manifest import Manifest, read_manifest
from datamodules.curation.replication import (
    FASHION,
    FASHION_TEST,
    MNIST,
    ReplicationConfig,
    augment_copy,
    build_replication,
    count_test_copies_left,
    load_ground_truth,
    self_dedup_scores,
    set_composition,
    source_groups,
)

needs_data = pytest.mark.skipif(
    not (has_real_data("MNIST") and has_real_data("FashionMNIST")),
    reason="needs MNIST and Fashion-MNIST under DATA_DIR",
)
SMALL = ReplicationConfig(mnist=30, fashion_mnist=30, exact_duplicates=4, augmented_duplicates=4,
                          test_copies=3, noise=5, queries=10, eval=20)  # fmt: skip


@needs_data
def test_planted_items_match_the_ground_truth(tmp_path: Path) -> None:
    meta = build_replication(tmp_path, SHARED_DATA, SMALL)
    assert meta["pool"] == 30 + 30 + 4 + 4 + 3 + 5
    pool = ManifestImageSource(tmp_path / "pool.csv", SHARED_DATA)
    gt = load_ground_truth(tmp_path / "ground_truth.npz")
    for dup, orig, augmented in zip(
        gt["duplicate_rows"], gt["original_rows"], gt["augmented"], strict=True
    ):
        same = torch.equal(pool.load(int(dup)), pool.load(int(orig)))
        assert same != augmented  # exact copies are identical, augmented ones are not
        assert pool.label(int(dup)) == pool.label(int(orig))
    evals = read_manifest(tmp_path / "eval.csv")
    test_images = ManifestImageSource(evals, SHARED_DATA)
    for row, test_index in zip(gt["test_copy_rows"], gt["test_copy_of"], strict=True):
        eval_row = int(np.flatnonzero(evals.index == test_index)[0])
        assert torch.equal(pool.load(int(row)), test_images.load(eval_row))
    assert set(pool.manifest.source[gt["noise_rows"]]) == {"noise"}
    queries = read_manifest(tmp_path / "queries.csv")
    pool_fashion = pool.manifest.index[pool.manifest.source == "fashion_mnist"]
    assert len(queries) == 10 and not np.isin(queries.index, pool_fashion).any()


@needs_data
def test_source_groups_tie_each_planted_copy_to_its_source_only(tmp_path: Path) -> None:
    meta = build_replication(tmp_path, SHARED_DATA, SMALL)
    gt = load_ground_truth(tmp_path / "ground_truth.npz")
    evals = read_manifest(tmp_path / "eval.csv")
    pool_groups, eval_groups = source_groups(gt, meta["pool"], evals.index)
    assert pool_groups.shape == (meta["pool"],) and eval_groups.shape == (20,)
    assert np.array_equal(pool_groups[gt["duplicate_rows"]], pool_groups[gt["original_rows"]])
    copy_of = np.searchsorted(evals.index, gt["test_copy_of"])
    assert np.array_equal(pool_groups[gt["test_copy_rows"]], eval_groups[copy_of])
    # every other image is its own source: one group per natural, noise and evaluation image
    everything = np.concatenate([pool_groups, eval_groups])
    assert len(np.unique(everything)) == meta["pool"] + 20 - 4 - 4 - 3


def test_source_groups_name_a_copied_image_missing_from_the_evaluation_set() -> None:
    gt = {"duplicate_rows": np.array([3]), "original_rows": np.array([0]),
          "test_copy_rows": np.array([4]), "test_copy_of": np.array([77])}  # fmt: skip
    with pytest.raises(CurationError, match=r"test images \[77\] copied into the pool"):
        source_groups(gt, 5, np.array([10, 11]))
    gt["test_copy_of"] = np.array([11])
    pool, evals = source_groups(gt, 5, np.array([10, 11]))
    assert pool.tolist() == [0, 1, 2, 0, 6] and evals.tolist() == [5, 6]


def test_augment_copy_is_a_near_duplicate() -> None:
    g = torch.Generator().manual_seed(0)
    image = torch.zeros(1, 28, 28, dtype=torch.uint8)
    image[:, 8:20, 10:18] = 200
    copy = augment_copy(image, g)
    assert copy.shape == image.shape and copy.dtype == torch.uint8
    assert not torch.equal(copy, image)
    assert (copy.float() - image.float()).abs().mean() < 60


def test_scores_on_a_hand_made_result() -> None:
    # pool rows 0..5; planted duplicates 4 (of 0) and 5 (of 1); 2 was also merged into 0's component
    components = np.array([0, 1, 0, 3, 0, 5])
    keep = np.array([True, True, False, True, False, True])
    scores = self_dedup_scores(components, keep, np.array([4, 5]), np.array([0, 1]))
    assert scores["dedup/recall"] == 0.5
    assert scores["dedup/precision"] == 0.5 and scores["dedup/false_removals"] == 1
    assert count_test_copies_left(np.array([0, 3, 5]), np.array([3, 4])) == 1


def test_set_composition_counts_sources_and_fashion_classes() -> None:
    sources = {"mnist": MNIST, "fashion_mnist": FASHION, "test": FASHION_TEST,
               "planted": {"kind": "npy", "path": "p.npy"}}  # fmt: skip
    names = ["mnist", "fashion_mnist", "fashion_mnist", "test", "planted", "mnist"]
    manifest = Manifest(sources, names, range(6))
    c = set_composition(manifest, [3, 3, 9, 3, 1, 7])
    assert c["sources"] == {"fashion_mnist": 2, "mnist": 2, "planted": 1, "test": 1}
    # only the natural Fashion-MNIST rows (either split) count: MNIST digits and planted images
    # share the label range but are other images
    assert c["fashion_classes"].tolist() == [0, 0, 0, 2, 0, 0, 0, 0, 0, 1]
    with pytest.raises(CurationError, match="5 labels for a set of 6"):
        set_composition(manifest, [0] * 5)
