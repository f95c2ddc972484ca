"""GroundingDataModule: renders the synthetic benchmark, reads it back, batches with captions
and chunked category lists, and draws every sample from its (index, seed) key."""

import json
from pathlib import Path

import pytest
import torch
from helpers import compose_config
from hydra.utils import instantiate

from datamodules.grounding_datamodule import GroundingDataModule


@pytest.fixture
def datamodule(tmp_path: Path, micro_overrides: list[str]) -> GroundingDataModule:
    dm = instantiate(compose_config("train", micro_overrides, tmp_path).data)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_benchmark_written_once(datamodule: GroundingDataModule) -> None:
    root = datamodule.synthetic_dir()
    names = {p.name for p in root.iterdir()}
    assert {"train.odvg.jsonl", "train_label_map.json", "val_seen.coco.json",
            "val_unseen.coco.json", "done.json", "images"} <= names  # fmt: skip
    stamp = (root / "train.odvg.jsonl").stat().st_mtime_ns
    datamodule.prepare_data()
    assert (root / "train.odvg.jsonl").stat().st_mtime_ns == stamp


def test_train_batch(datamodule: GroundingDataModule) -> None:
    batch = next(iter(datamodule.train_dataloader()))
    images, pad_mask = batch["images"], batch["pad_mask"]
    assert images.shape[0] == 2 and images.shape[-1] % 32 == 0 and images.shape[-2] % 32 == 0
    assert pad_mask.shape == (2, *images.shape[-2:])
    assert (images * pad_mask[:, None]).abs().sum() == 0  # zero padding
    (prompt,) = batch["prompts"]
    assert prompt.input_ids.shape == prompt.attention_mask.shape
    assert prompt.input_ids.shape[1] <= 256
    for b, target in enumerate(batch["targets"]):
        n_cats = len(prompt.names[b])
        assert 1 <= n_cats <= 4  # max_labels
        assert (prompt.positive_map[b, :n_cats].sum(-1) > 0).all()
        assert (prompt.positive_map[b, n_cats:] == 0).all()
        assert (target["cat_index"] < n_cats).all()
        assert ((target["boxes"] >= 0) & (target["boxes"] <= 1)).all()
        # every box's caption category is its label-map category
        labels = prompt.label_ids[b][target["cat_index"]]
        assert torch.equal(labels, target["category_id"])
    assert datamodule.train_set[(0, 0)]["caption"].endswith(" .")


def test_samples_are_functions_of_their_key(datamodule: GroundingDataModule) -> None:
    a, b = datamodule.train_set[(3, 11)], datamodule.train_set[(3, 11)]
    assert a["caption"] == b["caption"] and torch.equal(a["image"], b["image"])
    assert torch.equal(a["target"]["boxes"], b["target"]["boxes"])
    others = [datamodule.train_set[(3, s)] for s in range(12, 16)]
    assert any(o["caption"] != a["caption"] or o["image"].shape != a["image"].shape for o in others)


def test_val_batches_chunk_the_full_category_list(datamodule: GroundingDataModule) -> None:
    seen, unseen = datamodule.val_dataloader()
    batch = next(iter(seen))
    assert len(batch["prompts"]) >= 2, "140 categories exceed 256 tokens"
    ids = sorted(i for p in batch["prompts"] for i in p.label_ids[0].tolist())
    assert len(ids) == len(set(ids)) == 140  # every seen category exactly once
    assert min(ids) >= 1 and max(ids) <= 160  # COCO category ids are index + 1
    for target in batch["targets"]:
        assert set(target["category_id"].tolist()) <= set(ids)
    assert len(next(iter(unseen))["prompts"]) == 1  # 20 held-out categories fit one caption


def test_user_paths_and_missing_file(tmp_path: Path, datamodule: GroundingDataModule) -> None:
    root = datamodule.synthetic_dir()
    dm = GroundingDataModule(
        data_dir=str(tmp_path), batch_size=2, synthetic=None, tokenizer="tiny-random",
        train_odvg={"jsonl": str(root / "train.odvg.jsonl"), "image_root": str(root),
                    "label_map": str(root / "train_label_map.json")},
        val_coco={"val": {"json": str(root / "val_unseen.coco.json"), "image_root": str(root)}},
        augment={"scales": [128], "max_size": 160}, val_size=128, val_max_size=160,
    )  # fmt: skip
    dm.setup("fit")
    assert len(dm.train_set) == 8 and len(dm.val_sets) == 1
    assert next(iter(dm.train_dataloader()))["images"].shape[0] == 2
    missing = GroundingDataModule(
        data_dir=str(tmp_path), synthetic=None, tokenizer="tiny-random",
        train_odvg={"jsonl": str(tmp_path / "nope.jsonl"), "image_root": str(tmp_path)},
        val_coco={"val": {"json": str(tmp_path / "nope.json"), "image_root": str(tmp_path)}},
    )  # fmt: skip
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        missing.setup("fit")


def test_scene_parameters_reach_the_renderer(tmp_path: Path) -> None:
    """min/max items and scales in ``synthetic`` shape the scenes and name their own folder
    (items from the scikit-learn digits: tmp_path has no MNIST)."""
    synthetic = {"dir": str(tmp_path), "n_train": 6, "n_val": 1, "canvas_size": 64,
                 "min_items": 2, "max_items": 2, "min_scale": 20, "max_scale": 24}  # fmt: skip
    dm = GroundingDataModule(str(tmp_path), synthetic=synthetic, tokenizer="tiny-random")
    assert dm.synthetic_dir().name == "seed0_train6_val1_px64_items2-2_scale20-24"
    default = GroundingDataModule(str(tmp_path), synthetic={**synthetic, "min_items": 1,
                                  "max_items": 6, "min_scale": 24, "max_scale": 112})  # fmt: skip
    assert default.synthetic_dir().name == "seed0_train6_val1_px64"
    dm.prepare_data()
    lines = (dm.synthetic_dir() / "train.odvg.jsonl").read_text().splitlines()
    for line in lines:
        instances = json.loads(line)["detection"]["instances"]
        assert 1 <= len(instances) <= 2  # an occluded item may be dropped
        for inst in instances:
            x1, y1, x2, y2 = inst["bbox"]
            assert max(x2 - x1, y2 - y1) <= 24
