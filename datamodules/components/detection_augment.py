"""Box-, mask- and keypoint-aware augmentation of detection samples (spec §8, decision P1).

Built on ``torchvision.transforms.v2`` functional ops over ``tv_tensors``; every random choice
comes from a per-sample generator, so a sample is a pure function of its seed (exact resume).

Boxes use the pixel-extent convention of COCO/pycocotools (``boxes_from_masks``), which scales
exactly under resizing.
"""

from dataclasses import dataclass
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.ops import masks_to_boxes
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF


def boxes_from_masks(masks: torch.Tensor) -> torch.Tensor:
    """masks (G, H, W) bool, non-empty → (G, 4) xyxy boxes in the pixel-extent convention of
    COCO/pycocotools: a mask covering columns x1..x2 spans [x1, x2 + 1). This convention, unlike
    ``masks_to_boxes``' pixel indices, scales exactly under resizing."""
    return masks_to_boxes(masks).float() + torch.tensor([0.0, 0.0, 1.0, 1.0])


def _map(sample: dict[str, Any], fn: Any, **kwargs: Any) -> dict[str, Any]:
    """Applies a ``transforms.v2.functional`` op to every tv_tensor of a sample (it dispatches
    on the type: bilinear images, nearest masks, boxes and points moved geometrically)."""
    return {
        k: fn(v, **kwargs) if isinstance(v, tv_tensors.TVTensor) else v for k, v in sample.items()
    }


def _pick(options: tuple[int, ...], g: torch.Generator) -> int:
    return options[int(torch.randint(len(options), (), generator=g))]


def _labels_of(sample: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    """What ``SanitizeBoundingBoxes`` filters together with the boxes (masks it finds itself)."""
    keys = ("cat_index", "category_id", "keypoints", "visibility")
    return tuple(sample[k] for k in keys if k in sample)


@dataclass(frozen=True)
class DetectionAugment:
    """Box-, mask- and keypoint-aware augmentation (GD/Open-GD recipe at tiny sizes, spec §8).

    Flip with ``flip_prob``; then with ``crop_prob`` a random crop with sides in ``crop_size``
    measured after resizing the short side to one of ``crop_scales``; finally resize the short
    side to one of ``scales`` with the long side ≤ ``max_size``; ``SanitizeBoundingBoxes`` drops degenerate
    boxes with their labels, keypoints and masks. Every random choice is drawn from the
    generator passed per call, so a sample is a pure function of its seed (exact resume).
    """

    scales: tuple[int, ...] = (224, 240, 256, 272, 288)
    max_size: int = 320
    flip_prob: float = 0.5
    crop_prob: float = 0.5
    crop_scales: tuple[int, ...] = (224, 256, 288)
    crop_size: tuple[int, int] = (160, 256)
    keypoint_flip_index: tuple[int, ...] | None = None

    @classmethod
    def val(cls, size: int = 256, max_size: int = 320) -> "DetectionAugment":
        """Deterministic evaluation resize: short side ``size``, long side ≤ ``max_size``."""
        return cls(scales=(size,), max_size=max_size, flip_prob=0.0, crop_prob=0.0)

    def _flip(self, sample: dict[str, Any]) -> dict[str, Any]:
        sample = _map(sample, TF.horizontal_flip)
        if "keypoints" in sample:
            # torchvision flips points as pixel indices (x → W − 1 − x); ours are continuous
            # coordinates like the boxes (x → W − x).
            kp = sample["keypoints"]
            shift = torch.tensor([1.0, 0.0], dtype=kp.dtype)
            kp = tv_tensors.wrap(kp.as_subclass(torch.Tensor) + shift, like=kp)
            if self.keypoint_flip_index is not None:
                kp = tv_tensors.wrap(kp[:, list(self.keypoint_flip_index)], like=kp)
                sample["visibility"] = sample["visibility"][:, list(self.keypoint_flip_index)]
            sample["keypoints"] = kp
        return sample

    def _crop(self, sample: dict[str, Any], g: torch.Generator) -> dict[str, Any]:
        """GD's resize → random-size crop, drawn in the resized frame but cut from the current
        image, so the final resize is the only interpolation (nearest-neighbour mask errors
        would otherwise compound to > 1 px)."""
        h, w = sample["image"].shape[-2:]
        r = _pick(self.crop_scales, g) / min(h, w)  # the virtual pre-crop resize
        vh, vw = round(h * r), round(w * r)
        lo, hi = self.crop_size
        ch = int(torch.randint(min(lo, vh), min(hi, vh) + 1, (), generator=g))
        cw = int(torch.randint(min(lo, vw), min(hi, vw) + 1, (), generator=g))
        top = min(round(int(torch.randint(vh - ch + 1, (), generator=g)) / r), h - 1)
        left = min(round(int(torch.randint(vw - cw + 1, (), generator=g)) / r), w - 1)
        height, width = min(max(round(ch / r), 1), h - top), min(max(round(cw / r), 1), w - left)
        sample = _map(sample, TF.crop, top=top, left=left, height=height, width=width)
        if "masks" in sample:
            # A clamped box can cover none of a cut, non-convex mask: use the mask's tight box
            # (an empty mask gives a zero-area box that SanitizeBoundingBoxes removes).
            masks = sample["masks"].as_subclass(torch.Tensor)
            tight = torch.zeros(len(masks), 4)
            nonempty = masks.flatten(1).any(1)
            tight[nonempty] = boxes_from_masks(masks[nonempty])
            sample["boxes"] = tv_tensors.wrap(tight, like=sample["boxes"])
        return sample

    def __call__(self, sample: dict[str, Any], generator: torch.Generator) -> dict[str, Any]:
        """sample: image (tv Image), boxes (tv BoundingBoxes XYXY), cat_index, category_id,
        optional masks (tv Mask (G, H, W)), keypoints (tv KeyPoints (G, K, 2)), visibility (G, K).
        """
        if torch.rand((), generator=generator) < self.flip_prob:
            sample = self._flip(sample)
        if torch.rand((), generator=generator) < self.crop_prob:
            sample = self._crop(sample, generator)
        short = _pick(self.scales, generator)
        sample = _map(sample, TF.resize, size=[short], max_size=self.max_size)
        if "keypoints" in sample:  # points that left the image become invisible
            h, w = sample["image"].shape[-2:]
            xy = sample["keypoints"].as_subclass(torch.Tensor)
            inside = (xy[..., 0] >= 0) & (xy[..., 0] <= w) & (xy[..., 1] >= 0) & (xy[..., 1] <= h)
            sample["visibility"] = sample["visibility"].masked_fill(~inside, 0.0)
        return v2.SanitizeBoundingBoxes(labels_getter=_labels_of)(sample)
