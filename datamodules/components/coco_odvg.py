"""Detection/grounding datasets from ODVG jsonl (training) and COCO json (validation) (spec §8).

Annotations are parsed and validated when the dataset is built, so a corrupt file fails at once
with its file and line (jsonl) or annotation index (COCO json), not hours into training. Boxes
outside the image are clipped and boxes of zero area dropped, both counted. Images are decoded
to RGB (grayscale and RGBA included); masks stay RLE until an item is loaded.

Targets: ``boxes`` (G, 4) cxcywh normalised to the (augmented) image, ``cat_index`` (G,) into
``categories`` (the caption's categories), ``category_id`` (G,) dataset id (−1 for grounding
phrases), optional ``masks`` (G, H, W) bool and ``keypoints`` (G, K, 3) with normalised x, y.
"""

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_image
from torchvision.ops import box_convert

from datamodules.components.detection_augment import DetectionAugment


class AnnotationError(ValueError):
    """A malformed annotation; the message starts with ``file:line`` or ``file (annotation i)``."""


@dataclass
class DetectionRecord:
    """One image's annotations, validated. boxes (G, 4) xyxy pixels, clipped to the image."""

    file_name: str
    height: int
    width: int
    image_id: int
    categories: list[str]
    boxes: torch.Tensor
    cat_index: torch.Tensor
    category_id: torch.Tensor
    source: str
    masks: list[Any] | None = None  # per box: RLE dict or polygon list (pycocotools)
    keypoints: torch.Tensor | None = None  # (G, K, 3) x, y, visibility in pixels
    num_clipped: int = 0
    num_dropped: int = 0


@dataclass
class _Instances:
    """Accumulates one record's instances while validating them."""

    source: str
    height: int
    width: int
    boxes: list[list[float]] = field(default_factory=list)
    category_id: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    masks: list[Any] = field(default_factory=list)
    keypoints: list[list[float]] = field(default_factory=list)
    clipped: int = 0
    dropped: int = 0

    def add(self, xyxy: Any, category_id: int, name: str, item: dict) -> None:
        if not (isinstance(xyxy, list) and len(xyxy) == 4):
            raise AnnotationError(f"{self.source}: bbox must be 4 numbers, got {xyxy!r}")
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in xyxy):
            raise AnnotationError(f"{self.source}: bbox has non-finite values {xyxy!r}")
        x1, y1, x2, y2 = xyxy
        clipped = [min(max(x1, 0), self.width), min(max(y1, 0), self.height)]
        clipped += [min(max(x2, 0), self.width), min(max(y2, 0), self.height)]
        if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
            self.dropped += 1  # zero area (possibly after clipping)
            return
        self.clipped += clipped != [x1, y1, x2, y2]
        self.boxes.append([float(v) for v in clipped])
        self.category_id.append(category_id)
        self.names.append(name)
        self.masks.append(item.get("segmentation"))
        if "keypoints" in item:
            kp = item["keypoints"]
            if not (isinstance(kp, list) and len(kp) % 3 == 0 and kp):
                raise AnnotationError(f"{self.source}: keypoints must be [x, y, v] * K")
            self.keypoints.append([float(v) for v in kp])

    def record(self, file_name: str, image_id: int, categories: list[str]) -> DetectionRecord:
        index = {name: c for c, name in enumerate(categories)}
        n = len(self.boxes)
        masks = self.masks if n and all(m is not None for m in self.masks) else None
        keypoints = None
        if self.keypoints:
            if len(self.keypoints) != n or len({len(k) for k in self.keypoints}) != 1:
                raise AnnotationError(f"{self.source}: keypoints missing or of unequal length")
            keypoints = torch.tensor(self.keypoints).view(n, -1, 3)
        return DetectionRecord(
            file_name=file_name,
            height=self.height,
            width=self.width,
            image_id=image_id,
            categories=categories,
            boxes=torch.tensor(self.boxes, dtype=torch.float32).view(n, 4),
            cat_index=torch.tensor([index[x] for x in self.names], dtype=torch.long),
            category_id=torch.tensor(self.category_id, dtype=torch.long),
            source=self.source,
            masks=masks,
            keypoints=keypoints,
            num_clipped=self.clipped,
            num_dropped=self.dropped,
        )


def _require(obj: dict, key: str, kind: type | tuple[type, ...], source: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise AnnotationError(f"{source}: missing key {key!r}")
    if not isinstance(obj[key], kind):
        raise AnnotationError(f"{source}: {key!r} has type {type(obj[key]).__name__}")
    return obj[key]


def _odvg_record(obj: Any, source: str, label_map: dict[int, str] | None) -> DetectionRecord:
    file_name = _require(obj, "filename", str, source)
    inst = _Instances(
        source, _require(obj, "height", int, source), _require(obj, "width", int, source)
    )
    if "detection" in obj:
        for item in _require(obj["detection"], "instances", list, source):
            if label_map is None:  # names from the instances themselves
                label = item.get("label", -1)
                name = _require(item, "category", str, source)
            else:
                label = _require(item, "label", int, source)
                if label not in label_map:
                    raise AnnotationError(f"{source}: label {label} is not in the label map")
                name = label_map[label]
            inst.add(_require(item, "bbox", list, source), label, name.strip().lower(), item)
    elif "grounding" in obj:
        # Phrases become the caption's categories, de-duplicated (Open-GD's odvg.py).
        for item in _require(obj["grounding"], "regions", list, source):
            phrase = _require(item, "phrase", str, source).strip().lower()
            inst.add(_require(item, "bbox", list, source), -1, phrase, item)
    else:
        raise AnnotationError(f"{source}: neither 'detection' nor 'grounding' is present")
    categories = sorted(set(inst.names), key=inst.names.index)  # first-appearance order
    if label_map is not None and "detection" in obj:
        by_id = dict(zip(inst.names, inst.category_id, strict=True))
        categories = sorted(set(inst.names), key=lambda n: by_id[n])
    return inst.record(file_name, -1, categories)


def read_odvg(
    jsonl_path: Path | str, label_map_path: Path | str | None = None
) -> list[DetectionRecord]:
    """ODVG jsonl → records; ``categories`` are each image's present categories by label id."""
    path = Path(jsonl_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"ODVG annotation file {path} not found (write one with synthetic_scenes.write_odvg)"
        )
    label_map = None
    if label_map_path is not None:
        label_map = {int(k): v for k, v in json.loads(Path(label_map_path).read_text()).items()}
    records = []
    with path.open() as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            source = f"{path}:{line_no}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise AnnotationError(f"{source}: invalid JSON ({err.msg})") from err
            record = _odvg_record(obj, source, label_map)
            record.image_id = len(records)
            records.append(record)
    return records


def read_coco(json_path: Path | str) -> tuple[list[DetectionRecord], dict[int, int]]:
    """COCO json → (records, category id → contiguous index). Every record's ``categories`` is
    the full category list (index order), so ``cat_index`` is the contiguous index."""
    path = Path(json_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"COCO annotation file {path} not found (write one with synthetic_scenes.write_coco)"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise AnnotationError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from err
    cats = _require(data, "categories", list, str(path))
    id_to_index = {int(c["id"]): i for i, c in enumerate(cats)}
    names = [str(c["name"]).strip().lower() for c in cats]
    images = {}
    for i, img in enumerate(_require(data, "images", list, str(path))):
        source = f"{path} (image {i})"
        size = (_require(img, "height", int, source), _require(img, "width", int, source))
        images[_require(img, "id", int, source)] = (img, _Instances(source, *size))
    for i, ann in enumerate(_require(data, "annotations", list, str(path))):
        source = f"{path} (annotation {i}, id {ann.get('id') if isinstance(ann, dict) else '?'})"
        image_id = _require(ann, "image_id", int, source)
        category = _require(ann, "category_id", int, source)
        if image_id not in images or category not in id_to_index:
            raise AnnotationError(
                f"{source}: unknown image_id {image_id} or category_id {category}"
            )
        if ann.get("iscrowd", 0):
            continue  # crowd regions are not detection targets
        box = _require(ann, "bbox", list, source)
        xyxy = [box[0], box[1], box[0] + box[2], box[1] + box[3]] if len(box) == 4 else box
        inst = images[image_id][1]
        inst.source = source
        inst.add(xyxy, category, names[id_to_index[category]], ann)
    records = []
    for image_id, (img, inst) in images.items():
        inst.source = f"{path} (image id {image_id})"
        records.append(inst.record(_require(img, "file_name", str, inst.source), image_id, names))
    return records, id_to_index


def _decode_masks(masks: list[Any], height: int, width: int) -> torch.Tensor:
    """RLE dicts or polygon lists → (G, H, W) bool."""
    rles = [
        mask_utils.frPyObjects(m, height, width)
        if isinstance(m, list) or isinstance(m.get("counts"), list)
        else m
        for m in masks
    ]
    rles = [mask_utils.merge(r) if isinstance(r, list) else r for r in rles]
    return torch.from_numpy(np.ascontiguousarray(mask_utils.decode(rles).transpose(2, 0, 1))).bool()


class GroundingDataset(Dataset):
    """Images + targets from validated records; ``dataset[i]`` or ``dataset[(i, seed)]``.

    With an ``augment``, the seed (default: the index) drives every random choice, so a sample
    is a pure function of (index, seed). Returns (image (3, H, W) uint8, target dict).
    """

    def __init__(
        self,
        records: list[DetectionRecord],
        image_root: Path | str,
        augment: DetectionAugment | None = None,
        with_masks: bool = False,
        with_keypoints: bool = False,
    ) -> None:
        self.records, self.image_root, self.augment = records, Path(image_root), augment
        self.with_masks, self.with_keypoints = with_masks, with_keypoints
        self.num_clipped = sum(r.num_clipped for r in records)
        self.num_dropped = sum(r.num_dropped for r in records)
        if self.num_clipped or self.num_dropped:
            warnings.warn(
                f"{self.num_clipped} boxes clipped to their image, "
                f"{self.num_dropped} zero-area boxes dropped",
                stacklevel=2,
            )
        for r in records:
            if with_masks and len(r.boxes) and r.masks is None:
                raise AnnotationError(
                    f"{r.source}: with_masks=True but instances lack 'segmentation'"
                )
            if with_keypoints and len(r.boxes) and r.keypoints is None:
                raise AnnotationError(
                    f"{r.source}: with_keypoints=True but instances lack 'keypoints'"
                )

    def __len__(self) -> int:
        return len(self.records)

    def _load_image(self, record: DetectionRecord) -> torch.Tensor:
        path = self.image_root / record.file_name
        if not path.is_file():
            raise FileNotFoundError(
                f"image file {path} (from {record.source}) not found; check the image root"
            )
        try:
            image = decode_image(str(path), mode=ImageReadMode.RGB)  # gray and RGBA → RGB
        except RuntimeError as err:
            raise RuntimeError(f"cannot decode image {path} (from {record.source}): {err}") from err
        if tuple(image.shape[-2:]) != (record.height, record.width):
            raise AnnotationError(
                f"{record.source}: annotated size {record.height}x{record.width} but image {path} "
                f"is {image.shape[-2]}x{image.shape[-1]}"
            )
        return image

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, dict[str, Any]]:
        index, seed = key if isinstance(key, tuple) else (key, key)
        record = self.records[index]
        size = (record.height, record.width)
        sample: dict[str, Any] = {
            "image": tv_tensors.Image(self._load_image(record)),
            "boxes": tv_tensors.BoundingBoxes(
                record.boxes.clone(), format="XYXY", canvas_size=size
            ),
            "cat_index": record.cat_index.clone(),
            "category_id": record.category_id.clone(),
        }
        if self.with_masks:
            masks = (
                _decode_masks(record.masks or [], *size)
                if len(record.boxes)
                else torch.zeros(0, *size)
            )
            sample["masks"] = tv_tensors.Mask(masks.bool())
        if self.with_keypoints:
            kp = record.keypoints if record.keypoints is not None else torch.zeros(0, 1, 3)
            sample["keypoints"] = tv_tensors.KeyPoints(kp[..., :2].clone(), canvas_size=size)
            sample["visibility"] = kp[..., 2].clone()
        if self.augment is not None:
            sample = self.augment(sample, torch.Generator().manual_seed(seed))
        return sample["image"].as_subclass(torch.Tensor), self._target(sample, record)

    @staticmethod
    def _target(sample: dict[str, Any], record: DetectionRecord) -> dict[str, Any]:
        h, w = sample["image"].shape[-2:]
        scale = torch.tensor([w, h, w, h], dtype=torch.float32)
        boxes = box_convert(sample["boxes"].as_subclass(torch.Tensor).float(), "xyxy", "cxcywh")
        target = {
            "boxes": boxes / scale,
            "cat_index": sample["cat_index"],
            "category_id": sample["category_id"],
            "categories": record.categories,
            "image_id": record.image_id,
            "orig_size": (record.height, record.width),
            "size": (h, w),
        }
        if "masks" in sample:
            target["masks"] = sample["masks"].as_subclass(torch.Tensor).bool()
        if "keypoints" in sample:
            xy = sample["keypoints"].as_subclass(torch.Tensor) / scale[:2]
            target["keypoints"] = torch.cat([xy, sample["visibility"][..., None]], dim=-1)
        return target
