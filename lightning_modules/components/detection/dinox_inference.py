"""Post-processing and prompt sampling for the DINO-X extensions (spec §10, §12).

``DINOXPostProcess`` extends ``postprocess_image`` (boxes, scores, labels over chunked passes)
with the mask (stride-4 logits → original pixels) and keypoints (normalised → original pixels)
of each detection's query. ``group_prompts`` turns ground-truth boxes into visual prompts, one
group per (image, category).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import box_convert

from lightning_modules.components.detection.outputs import DetectorOutput
from lightning_modules.components.detection.postprocess import ChunkPrediction, postprocess_image
from lightning_modules.components.detection.visual_prompt import VisualPrompts


@dataclass
class PassOutput:
    """One image's share of a forward pass: ``out`` of the pass, ``k`` the image's row in it,
    positive_map (C, T) of its categories, label_ids (C,) their global ids."""

    out: DetectorOutput
    k: int
    positive_map: torch.Tensor
    label_ids: torch.Tensor


def restrict_parts(parts: list[PassOutput], label_ids: torch.Tensor) -> list[PassOutput]:
    """One image's passes with only the categories in ``label_ids`` (C',) left: each pass keeps
    the rows of its positive map whose label is there; passes with none left are dropped.

    Selecting the top-K after this restriction ranks the text prompts over the same categories
    as a visual-prompt pass, so the two AP values compare like with like."""
    kept = []
    for part in parts:
        on = torch.isin(part.label_ids, label_ids.to(part.label_ids.device))
        if on.any():
            kept.append(PassOutput(part.out, part.k, part.positive_map[on], part.label_ids[on]))
    return kept


def group_prompts(boxes: list[torch.Tensor], keys: list[torch.Tensor],
                  generator: torch.Generator | None = None
                  ) -> tuple[VisualPrompts, torch.Tensor]:  # fmt: skip
    """Per image b its boxes[b] (G_b, 4) cxcywh and category keys[b] (G_b,) → visual prompts
    with one group per (image, category) and the key of every group (G,).

    With a ``generator`` each group keeps a random 1..all of its boxes (training, spec §12.2);
    without, all of them (exemplars).
    """
    device = boxes[0].device if boxes else torch.device("cpu")
    chosen, image_index, group, group_keys = [], [], [], []
    for b, (bx, key) in enumerate(zip(boxes, keys, strict=True)):
        for value in torch.unique(key).tolist():
            idx = (key == value).nonzero().flatten()
            if generator is not None:
                n = int(torch.randint(1, len(idx) + 1, (), generator=generator))
                idx = idx[torch.randperm(len(idx), generator=generator)[:n].to(idx.device)]
            chosen.append(bx[idx])
            image_index += [b] * len(idx)
            group += [len(group_keys)] * len(idx)
            group_keys.append(value)
    long = {"dtype": torch.long, "device": device}
    prompts = VisualPrompts(
        torch.cat(chosen) if chosen else torch.zeros(0, 4, device=device),
        torch.tensor(image_index, **long), torch.tensor(group, **long),
    )  # fmt: skip
    return prompts, torch.tensor(group_keys, **long)


def pixel_targets(targets: list[dict], metas: list[dict]) -> list[dict[str, torch.Tensor]]:
    """Collated targets (normalised boxes/keypoints, masks at the resized size) → the original
    image's pixels: boxes (G, 4) xyxy, labels = category ids, masks (G, H, W) bool nearest-
    resized, keypoints (G, K, 3) (x, y, v) — the format of the AP metrics."""
    gts = []
    for t, meta in zip(targets, metas, strict=True):
        h, w = meta["orig_size"]
        xyxy = box_convert(t["boxes"].float(), "cxcywh", "xyxy")
        gt = {"boxes": xyxy * xyxy.new_tensor([w, h, w, h]), "labels": t["category_id"]}
        if "masks" in t:
            m = t["masks"]
            gt["masks"] = (F.interpolate(m[None].float(), size=(h, w), mode="nearest")[0] > 0
                           if len(m) else m.new_zeros(0, h, w, dtype=torch.bool))  # fmt: skip
        if "keypoints" in t:
            kp = t["keypoints"].float()
            gt["keypoints"] = torch.cat([kp[..., :2] * kp.new_tensor([w, h]), kp[..., 2:]], -1)
        gts.append(gt)
    return gts


def unique_instances(det: dict[str, torch.Tensor], limit: int) -> torch.Tensor:
    """Indices of the first (best) detection of each distinct (part, query), at most ``limit``:
    one instance per query for class-agnostic keypoint evaluation."""
    key = det["part"] * (int(det["query"].max()) + 1 if len(det["query"]) else 1) + det["query"]
    seen: set[int] = set()
    keep = []
    for i, k in enumerate(key.tolist()):
        if k not in seen:
            seen.add(k)
            keep.append(i)
            if len(keep) == limit:
                break
    return torch.tensor(keep, dtype=torch.long, device=key.device)


class DINOXPostProcess:
    """Args: mask_select: detections (best first) that get a mask; keypoint_select: kept for
    callers selecting instances for keypoint evaluation."""

    def __init__(self, mask_select: int = 100, keypoint_select: int = 20) -> None:
        self.mask_select, self.keypoint_select = mask_select, keypoint_select

    def __call__(self, parts: list[PassOutput], orig_size: tuple[int, int],
                 image_size: tuple[int, int], num_select: int = 300,
                 nms_iou: float | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
        """→ ``postprocess_image``'s dict plus, when the heads ran, "masks" (M, H, W) bool of the
        best M ≤ mask_select detections and "keypoints" (K, Kp, 3) (x, y pixels, visibility
        probability) of every detection; sizes (h, w): original and resized unpadded image."""
        chunks = [ChunkPrediction(p.out.logits[p.k], p.out.boxes[p.k], p.out.text_token_mask[p.k],
                                  p.positive_map, p.label_ids) for p in parts]  # fmt: skip
        det = postprocess_image(chunks, orig_size, num_select, nms_iou)
        picks = list(zip(det["part"].tolist(), det["query"].tolist(), strict=True))
        if parts[0].out.masks is not None:
            det["masks"] = self._masks(parts, picks[: self.mask_select], orig_size, image_size)
        if parts[0].out.keypoints is not None:
            h, w = orig_size
            kp = [parts[p].out.keypoints[parts[p].k, q] for p, q in picks]
            kp = torch.stack(kp) if kp else parts[0].out.keypoints.new_zeros(0, 1, 3)
            scale = kp.new_tensor([w, h])
            det["keypoints"] = torch.cat([kp[..., :2] * scale, kp[..., 2:].sigmoid()], -1)
        return det

    @staticmethod
    def _masks(parts: list[PassOutput], picks: list[tuple[int, int]],
               orig_size: tuple[int, int], image_size: tuple[int, int]) -> torch.Tensor:  # fmt: skip
        """Stride-4 logits of the padded batch → crop the unpadded image → original size."""
        if not picks:
            return torch.zeros(0, *orig_size, dtype=torch.bool)
        logits = torch.stack([parts[p].out.masks[parts[p].k, q] for p, q in picks]).float()
        up = F.interpolate(logits[None], scale_factor=4, mode="bilinear", align_corners=False)[0]
        h, w = image_size
        up = up[:, :h, :w]
        return F.interpolate(up[None], size=orig_size, mode="bilinear", align_corners=False)[0] > 0
