"""Post-processing: token logits → per-category scores → top-K boxes in pixels (spec §10).

A category's score is the mean of its tokens' sigmoids (``prob_token @ posmap_normᵀ``, Open-GD
``PostProcess``); padded tokens are zeroed as the last operation. Chunked inference (category
lists over 256 tokens) runs the detector once per chunk; the (query, category) candidates of all
chunks are concatenated with their global category ids before the one top-K, so no category is
dropped.
"""

from dataclasses import dataclass

import torch
from torchvision.ops import batched_nms, box_convert


@dataclass
class ChunkPrediction:
    """One image's predictions for one caption (chunk).

    logits (Q, T) raw; boxes (Q, 4) cxcywh normalised to the unpadded image; text_token_mask
    (T,) bool; positive_map (C, T) 0/1 of the caption's categories; label_ids (C,) long: the
    global category index of each caption category.
    """

    logits: torch.Tensor
    boxes: torch.Tensor
    text_token_mask: torch.Tensor
    positive_map: torch.Tensor
    label_ids: torch.Tensor


def category_scores(
    logits: torch.Tensor, text_token_mask: torch.Tensor, positive_map: torch.Tensor
) -> torch.Tensor:
    """logits (Q, T), text_token_mask (T,), positive_map (C, T) → scores (Q, C) in [0, 1]."""
    prob = logits.float().sigmoid().masked_fill(~text_token_mask[None], 0.0)
    weights = positive_map.float() / positive_map.float().sum(-1, keepdim=True).clamp(min=1)
    return prob @ weights.T


def postprocess_image(
    parts: list[ChunkPrediction],
    orig_size: tuple[int, int],
    num_select: int = 300,
    nms_iou: float | None = None,
) -> dict[str, torch.Tensor]:
    """One image's chunk predictions → {"boxes" (K, 4) xyxy pixels of the original image (clipped
    to it),
    "scores" (K,), "labels" (K,) global category index, "query" (K,) and "part" (K,): the query
    and the chunk each detection comes from (to pick its mask or keypoints)}, best first,
    K ≤ ``num_select``.

    With ``nms_iou``, class-wise NMS (``batched_nms``) runs before the top-K.
    """
    scores, boxes, labels, queries, part_ids = [], [], [], [], []
    for i, part in enumerate(parts):
        s = category_scores(part.logits, part.text_token_mask, part.positive_map)  # (Q, C)
        q, c = s.shape
        scores.append(s.flatten())
        boxes.append(part.boxes.float()[:, None].expand(q, c, 4).reshape(-1, 4))
        labels.append(part.label_ids.to(s.device)[None].expand(q, c).flatten())
        queries.append(torch.arange(q, device=s.device)[:, None].expand(q, c).flatten())
        part_ids.append(torch.full((q * c,), i, dtype=torch.long, device=s.device))
    scores, boxes, labels = torch.cat(scores), torch.cat(boxes), torch.cat(labels)
    queries, part_ids = torch.cat(queries), torch.cat(part_ids)
    h, w = orig_size
    xyxy = box_convert(boxes, "cxcywh", "xyxy") * boxes.new_tensor([w, h, w, h])
    xyxy = torch.minimum(xyxy.clamp(min=0), xyxy.new_tensor([w, h, w, h]))  # inside the image
    if nms_iou is not None:
        keep = batched_nms(xyxy, scores, labels, nms_iou)
        scores, xyxy, labels = scores[keep], xyxy[keep], labels[keep]
        queries, part_ids = queries[keep], part_ids[keep]
    top = scores.topk(min(num_select, scores.numel())).indices
    return {"boxes": xyxy[top], "scores": scores[top], "labels": labels[top],
            "query": queries[top], "part": part_ids[top]}  # fmt: skip


class PostProcess:
    """Batch post-processing of single-caption predictions (one caption per image).

    Args:
        num_select: K, the detections kept per image (300, as GD's COCO evaluation).
        nms_iou: optional class-wise NMS IoU threshold (off by default).
    """

    def __init__(self, num_select: int = 300, nms_iou: float | None = None) -> None:
        self.num_select, self.nms_iou = num_select, nms_iou

    def __call__(
        self,
        logits: torch.Tensor,
        boxes: torch.Tensor,
        text_token_mask: torch.Tensor,
        positive_maps: list[torch.Tensor],
        orig_sizes: list[tuple[int, int]],
        label_ids: list[torch.Tensor] | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        """logits (B, Q, T), boxes (B, Q, 4), text_token_mask (B, T), positive_maps[b] (C_b, T),
        orig_sizes[b] (h, w), label_ids[b] (C_b,) (default: 0..C_b−1) → one dict per image."""
        results = []
        for b, pmap in enumerate(positive_maps):
            ids = label_ids[b] if label_ids is not None else torch.arange(len(pmap))
            part = ChunkPrediction(logits[b], boxes[b], text_token_mask[b], pmap, ids)
            results.append(postprocess_image([part], orig_sizes[b], self.num_select, self.nms_iou))
        return results
