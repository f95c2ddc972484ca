"""Synthetic grounding scenes: coloured MNIST digits and Fashion-MNIST garments (decision P8).

Each category is "<colour> <object>". One colour per object is held out of training
(Latin-square: object o loses colour o mod n_colours, so every colour and every object is still
seen); ``val_unseen`` holds only those compositions, for a zero-shot test. Every image is a pure
function of (seed, split, index). Scenes are written in the real formats — ODVG jsonl + label
map for training, COCO json with RLE masks for validation — so the real loaders are exercised.

Boxes use the pixel-extent convention of COCO/pycocotools: a mask covering columns x1..x2 has
box [x1, x2 + 1), i.e. ``masks_to_boxes(mask) + (0, 0, 1, 1)``; that convention scales exactly
under resizing.
"""

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from pycocotools import mask as mask_utils
from torchvision.io import write_png

from datamodules.components.detection_augment import boxes_from_masks

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 225),
    "yellow": (235, 215, 40),
    "orange": (245, 140, 25),
    "purple": (145, 55, 185),
    "cyan": (40, 205, 215),
    "white": (245, 245, 245),
}
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
GARMENTS = ("t-shirt", "trouser", "pullover", "dress", "coat")
GARMENTS += ("sandal", "shirt", "sneaker", "bag", "ankle boot")
SPLITS = ("train", "val_seen", "val_unseen")
NUM_KEYPOINTS = 5  # 4 corners of the mask's tight box, then the alpha-weighted centroid
KEYPOINT_FLIP_INDEX = (1, 0, 3, 2, 4)  # corner order after a horizontal flip
_SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class SceneConfig:
    """Rendering parameters (spec §8: 1–6 items of 24–112 px on a 256 px canvas)."""

    canvas_size: int = 256
    min_items: int = 1
    max_items: int = 6
    min_scale: int = 24
    max_scale: int = 112
    min_visible: float = 0.3
    colour_jitter: int = 20


@dataclass
class Scene:
    """image (3, H, W) uint8; boxes (G, 4) xyxy pixels; labels (G,) category index;
    masks (G, H, W) bool visible parts; keypoints (G, 5, 3) (x, y, visibility) pixels."""

    image: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor
    keypoints: torch.Tensor


@functools.lru_cache(maxsize=4)
def load_items(data_root: str | None, train: bool) -> tuple[torch.Tensor, ...]:
    """Item bank: per object (DIGITS + GARMENTS order) its images (N_o, h, w) uint8.

    Uses torchvision's MNIST and FashionMNIST raw files under ``data_root``; without them,
    scikit-learn's 8×8 ``load_digits`` (digits only) keeps minimal CI running.
    """
    root = Path(data_root) if data_root else None
    if root is not None and (root / "MNIST" / "raw").is_dir():
        mnist = torchvision.datasets.MNIST(str(root), train=train, download=False)
        images, objects = [mnist.data], [mnist.targets]
        if (root / "FashionMNIST" / "raw").is_dir():
            fashion = torchvision.datasets.FashionMNIST(str(root), train=train, download=False)
            images.append(fashion.data)
            objects.append(fashion.targets + len(DIGITS))
        all_images, all_objects = torch.cat(images), torch.cat(objects)
    else:
        from sklearn.datasets import load_digits

        digits = load_digits()
        pixels = torch.from_numpy(digits.images * (255.0 / 16.0)).round().to(torch.uint8)
        half = len(pixels) // 2  # disjoint halves stand in for train / test
        part = slice(0, half) if train else slice(half, None)
        all_images, all_objects = pixels[part], torch.from_numpy(digits.target)[part].long()
    n_objects = int(all_objects.max()) + 1
    return tuple(all_images[all_objects == o] for o in range(n_objects))


def _texture(size: int, g: torch.Generator) -> torch.Tensor:
    """Random noise, stripes or gradient between two random colours → (3, size, size) float."""
    c1, c2 = torch.rand(2, 3, 1, 1, generator=g) * 255
    kind = int(torch.randint(3, (), generator=g))
    line = torch.linspace(0, 1, size)
    angle = float(torch.rand((), generator=g)) * torch.pi
    ramp = line[None, :] * np.cos(angle) + line[:, None] * np.sin(angle)  # (size, size)
    if kind == 0:  # smooth noise: upsampled low-resolution uniform noise
        cells = int(torch.randint(4, 17, (), generator=g))
        low = torch.rand(1, 1, cells, cells, generator=g)
        t = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    elif kind == 1:  # stripes
        freq = 2 + float(torch.rand((), generator=g)) * 10
        t = 0.5 + 0.5 * torch.sin(2 * torch.pi * freq * ramp)
    else:  # gradient
        t = (ramp - ramp.min()) / (ramp.max() - ramp.min())
    return c1 * (1 - t) + c2 * t


class SyntheticScenes:
    """Scene generator over colour × object categories with held-out compositions.

    Category index = object · n_colours + colour; ``categories[i]`` is its name.
    """

    def __init__(self, data_root: str | None, seed: int = 0, config: SceneConfig | None = None):
        self.data_root = str(data_root) if data_root else None
        self.seed = seed
        self.config = config or SceneConfig()
        n_objects = len(load_items(self.data_root, True))
        self.objects = (DIGITS + GARMENTS)[:n_objects]
        self.colours = list(COLOURS)
        n_c = len(self.colours)
        self.categories = [f"{c} {o}" for o in self.objects for c in self.colours]
        self.held_out = frozenset(o * n_c + o % n_c for o in range(n_objects))

    def split_labels(self, split: str) -> list[int]:
        """Category indices a split may contain (train and val_seen: seen; val_unseen: held out)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        everything = range(len(self.categories))
        if split == "val_unseen":
            return [i for i in everything if i in self.held_out]
        return [i for i in everything if i not in self.held_out]

    def related_labels(self, split: str) -> dict[int, list[int]]:
        """Per category of ``split``, the split's categories sharing its colour or its object
        (hard negatives for ``CaptionSampler``)."""
        labels, n_c = self.split_labels(split), len(self.colours)
        return {
            a: [b for b in labels if b != a and (a % n_c == b % n_c or a // n_c == b // n_c)]
            for a in labels
        }

    def _generator(self, split: str, index: int) -> torch.Generator:
        key = (self.seed * _SEED_STRIDE + SPLITS.index(split)) * _SEED_STRIDE + index
        return torch.Generator().manual_seed(key % (2**62))

    def render(self, split: str, index: int) -> Scene:
        """The scene at (seed, split, index); identical on every call."""
        cfg, g = self.config, self._generator(split, index)
        labels = self.split_labels(split)
        bank = load_items(self.data_root, split == "train")  # val items are unseen images
        size, n_c = cfg.canvas_size, len(self.colours)
        canvas = _texture(size, g)
        n_items = int(torch.randint(cfg.min_items, cfg.max_items + 1, (), generator=g))
        chosen = torch.tensor(
            [labels[i] for i in torch.randint(len(labels), (n_items,), generator=g)]
        )
        alphas = torch.zeros(n_items, size, size)
        for k, label in enumerate(chosen.tolist()):
            pool = bank[label // n_c]
            item = pool[int(torch.randint(len(pool), (), generator=g))].float()[None, None]
            s = int(torch.randint(cfg.min_scale, cfg.max_scale + 1, (), generator=g))
            y, x = torch.randint(0, size - s + 1, (2,), generator=g).tolist()
            patch = F.interpolate(item, size=(s, s), mode="bilinear", antialias=True)[0, 0]
            alpha = (patch / 255.0).clamp(0, 1)  # the grey value is the alpha
            alphas[k, y : y + s, x : x + s] = alpha
            base = torch.tensor(COLOURS[self.colours[label % n_c]], dtype=torch.float32)
            jitter = (torch.rand(3, generator=g) * 2 - 1) * cfg.colour_jitter
            tint = (base + jitter).clamp(0, 255)[:, None, None]
            region = canvas[:, y : y + s, x : x + s]
            region.mul_(1 - alpha).add_(tint * alpha)  # "over" compositing, in place
        return self._annotate(canvas, chosen, alphas)

    def _annotate(self, canvas: torch.Tensor, labels: torch.Tensor, alphas: torch.Tensor) -> Scene:
        full = alphas > 0.5  # (N, H, W)
        visible = torch.zeros_like(full)
        occluded = torch.zeros_like(full[0])
        for k in range(len(full) - 1, -1, -1):  # visible = own mask minus later (upper) items
            visible[k] = full[k] & ~occluded
            occluded |= full[k]
        area = full.flatten(1).sum(1)
        keep = (area > 0) & (visible.flatten(1).sum(1) >= self.config.min_visible * area)
        visible, alphas, labels = visible[keep], alphas[keep], labels[keep]
        boxes = boxes_from_masks(visible) if len(visible) else torch.zeros(0, 4)
        x1, y1, x2, y2 = boxes.unbind(-1)
        corners = torch.stack([x1, y1, x2, y1, x2, y2, x1, y2], -1).view(-1, 4, 2)
        weights = alphas * visible  # alpha-weighted centroid of the visible item, pixel centres
        total = weights.flatten(1).sum(1).clamp(min=1e-6)
        centres = torch.arange(canvas.shape[-1], dtype=torch.float32) + 0.5
        cx = (weights.sum(1) * centres).sum(1) / total
        cy = (weights.sum(2) * centres[: canvas.shape[-2]]).sum(1) / total
        points = torch.cat([corners, torch.stack([cx, cy], -1)[:, None]], dim=1)
        keypoints = torch.cat([points, torch.full((len(points), NUM_KEYPOINTS, 1), 2.0)], -1)
        image = canvas.round().clamp(0, 255).to(torch.uint8)
        return Scene(image, boxes, labels, visible, keypoints)


def _rle(mask: torch.Tensor) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.numpy().astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _instance(scene: Scene, i: int) -> dict:
    return {
        "segmentation": _rle(scene.masks[i]),
        "keypoints": [round(v, 2) for v in scene.keypoints[i].flatten().tolist()],
        "num_keypoints": NUM_KEYPOINTS,
    }


def write_odvg(
    scenes: SyntheticScenes, split: str, n: int, out_dir: Path | str
) -> tuple[Path, Path]:
    """Renders ``n`` scenes as ODVG jsonl + label map (only the split's categories).

    Instances carry ``bbox`` [x1, y1, x2, y2], ``label``, ``category`` and, as extensions read
    by ``coco_odvg``, an RLE ``segmentation`` and flat COCO-style ``keypoints``.
    Returns (jsonl path, label map path); images go to ``out_dir/images/<split>/``.
    """
    out_dir = Path(out_dir)
    (out_dir / "images" / split).mkdir(parents=True, exist_ok=True)
    lines = []
    for index in range(n):
        scene = scenes.render(split, index)
        name = f"images/{split}/{index:06d}.png"
        write_png(scene.image, str(out_dir / name))
        instances = [
            {
                "bbox": [round(v, 2) for v in scene.boxes[i].tolist()],
                "label": int(scene.labels[i]),
                "category": scenes.categories[int(scene.labels[i])],
                **_instance(scene, i),
            }
            for i in range(len(scene.labels))
        ]
        h, w = scene.image.shape[-2:]
        record = {"filename": name, "height": h, "width": w, "detection": {"instances": instances}}
        lines.append(json.dumps(record))
    jsonl, label_map = out_dir / f"{split}.odvg.jsonl", out_dir / f"{split}_label_map.json"
    jsonl.write_text("\n".join(lines) + "\n")
    label_map.write_text(
        json.dumps({str(i): scenes.categories[i] for i in scenes.split_labels(split)})
    )
    return jsonl, label_map


def write_coco(scenes: SyntheticScenes, split: str, n: int, out_dir: Path | str) -> Path:
    """Renders ``n`` scenes as COCO json with RLE masks and 5 keypoints per instance.

    Category ids are index + 1 (1-based, so the contiguous-index ↔ id map is exercised);
    the categories are those the split may contain.
    """
    out_dir = Path(out_dir)
    (out_dir / "images" / split).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(n):
        scene = scenes.render(split, index)
        name = f"images/{split}/{index:06d}.png"
        write_png(scene.image, str(out_dir / name))
        h, w = scene.image.shape[-2:]
        images.append({"id": index, "file_name": name, "height": h, "width": w})
        for i in range(len(scene.labels)):
            x1, y1, x2, y2 = scene.boxes[i].tolist()
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": index,
                    "category_id": int(scene.labels[i]) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": int(scene.masks[i].sum()),
                    "iscrowd": 0,
                    **_instance(scene, i),
                }
            )
    categories = [{"id": i + 1, "name": scenes.categories[i]} for i in scenes.split_labels(split)]
    path = out_dir / f"{split}.coco.json"
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return path
