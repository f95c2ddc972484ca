"""Set criterion of the grounding detector: matching + losses on every output (spec §6-§7, P6).

Terms (unweighted, each divided by the number of GT boxes, all-reduced over ranks):
``loss_{focal,l1,giou}`` for the last decoder layer, ``loss_*_{i}`` for earlier layer i,
``loss_*_enc`` for the encoder's top-K proposals (matched on those K, not all tokens),
``loss_*_dn`` / ``loss_*_dn_{i}`` for the denoising queries of the last / earlier layers (no
matching: positive DN queries own their GT; negatives have an all-zero class target and no box
loss; normaliser num_boxes · groups). ``weight_dict`` gives every term its weight from one
table (focal 1 / L1 5 / GIoU 2); ``loss`` = Σ weight · term. A positive ``names`` weight adds
``loss_names*`` on the same matched queries (``name_cross_entropy``; GD has no such term).
"""

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import nn
from torchvision.ops import box_convert, box_iou

from lightning_modules.components.detection.matcher import HungarianMatcher
from lightning_modules.components.detection.outputs import DetectorOutput, DNMeta, Predictions
from lightning_modules.components.losses.detection_losses import (
    box_losses,
    name_cross_entropy,
    token_focal_loss,
)
from lightning_modules.components.losses.distributed import all_reduce_sum, world_size
from lightning_modules.components.losses.fp32 import fp32_region

Indices = list[tuple[torch.Tensor, torch.Tensor]]


class GroundTruth(NamedTuple):
    """One batch's targets: boxes[b] (G_b, 4) cxcywh, tokens[b] (G_b, T) 0/1 spans of each GT's
    name, classes[b] (G_b,) its category index, positive_map (B, C, T), text_mask (B, T)."""

    boxes: list[torch.Tensor]
    tokens: list[torch.Tensor]
    classes: list[torch.Tensor]
    positive_map: torch.Tensor
    text_mask: torch.Tensor


def matched_iou(
    boxes: torch.Tensor, gt_boxes: list[torch.Tensor], indices: Indices
) -> torch.Tensor:
    """Mean IoU of matched (query, GT) pairs: boxes (B, Q, 4) cxcywh; NaN without pairs."""
    ious = [
        box_iou(
            box_convert(boxes[b, q], "cxcywh", "xyxy"),
            box_convert(gt_boxes[b][g], "cxcywh", "xyxy"),
        ).diagonal()
        for b, (q, g) in enumerate(indices)
    ]
    return torch.cat(ious).mean() if ious else torch.tensor(float("nan"))


class SetCriterion(nn.Module):
    """Owns the matcher and the weights; returns every term and the weighted total.

    Args:
        matcher: the Hungarian matcher (costs class 2 / L1 5 / GIoU 2).
        weights: {focal, l1, giou} loss weights (1 / 5 / 2), optional ``names`` (0: off); extra
            keys (mask_bce, mask_dice) are kept in ``weights`` for extension heads.
        focal: {alpha, gamma} (0.25 / 2).
    """

    def __init__(
        self,
        matcher: HungarianMatcher,
        weights: Mapping[str, float] | None = None,
        focal: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.matcher = matcher
        self.weights = {"focal": 1.0, "l1": 5.0, "giou": 2.0, **dict(weights or {})}
        focal = {"alpha": 0.25, "gamma": 2.0, **dict(focal or {})}
        self.alpha, self.gamma = float(focal["alpha"]), float(focal["gamma"])

    def weight_of(self, name: str) -> float:
        """Weight of a term name such as ``loss_giou_dn_0`` (from its base term)."""
        return float(self.weights[name.removeprefix("loss_").split("_")[0]])

    def weight_dict(self, names: list[str]) -> dict[str, float]:
        """{term name: weight} for the given term names."""
        return {n: self.weight_of(n) for n in names}

    @staticmethod
    def num_boxes(gt_boxes: list[torch.Tensor], device: torch.device) -> torch.Tensor:
        """Σ G_b averaged over ranks, clamped ≥ 1 (the normaliser of every term)."""
        total = torch.tensor(float(sum(len(b) for b in gt_boxes)), device=device)
        return (all_reduce_sum(total) / world_size()).clamp(min=1.0)

    def _terms(self, pred: Predictions, indices: Indices, gt: GroundTruth,
               num_boxes: torch.Tensor,
               query_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
        target = torch.zeros_like(pred.logits, dtype=torch.float32)
        indices = [(q.to(target.device), g.to(target.device)) for q, g in indices]
        src, tgt = [], []
        for b, (q, g) in enumerate(indices):
            target[b, q] = gt.tokens[b][g].to(target.dtype)
            src.append(pred.boxes[b, q])
            tgt.append(gt.boxes[b][g])
        focal = token_focal_loss(pred.logits, target, gt.text_mask, num_boxes, query_mask,
                                 self.alpha, self.gamma)  # fmt: skip
        l1, giou = box_losses(torch.cat(src), torch.cat(tgt), num_boxes)
        terms = {"focal": focal, "l1": l1, "giou": giou}
        if self.weights.get("names", 0.0) > 0:
            queries = [q for q, _ in indices]
            classes = [gt.classes[b].to(target.device)[g] for b, (_, g) in enumerate(indices)]
            terms["names"] = name_cross_entropy(pred.logits, gt.positive_map, gt.text_mask,
                                                queries, classes, num_boxes)  # fmt: skip
        return terms

    def _dn_terms(self, pred: Predictions, meta: DNMeta, gt: GroundTruth,
                  num_boxes: torch.Tensor) -> dict[str, torch.Tensor]:  # fmt: skip
        """Positives: GT j of group g is query 2·max_gt·g + j; negatives max_gt later."""
        device = pred.logits.device
        query_mask = torch.zeros(pred.logits.shape[:2], dtype=torch.bool, device=device)
        indices = []
        for b, boxes in enumerate(gt.boxes):
            j = torch.arange(len(boxes), device=device)
            starts = torch.arange(meta.num_groups, device=device) * 2 * meta.max_gt
            pos = (starts[:, None] + j[None]).flatten()
            query_mask[b, pos] = True
            query_mask[b, pos + meta.max_gt] = True
            indices.append((pos, j.repeat(meta.num_groups)))
        return self._terms(pred, indices, gt, num_boxes * meta.num_groups, query_mask)

    def forward(
        self, out: DetectorOutput, targets: list[dict[str, Any]], positive_map: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """targets[b]: boxes (G_b, 4) cxcywh, cat_index (G_b,) into caption b's categories;
        positive_map (B, C_max, T) 0/1 → {"loss": total, "loss_<term><suffix>": value, ...,
        "matched_iou": mean IoU of the last layer's matched pairs (a metric, no gradient)}."""
        gt_boxes = [t["boxes"] for t in targets]
        gt_tokens = [positive_map[b, t["cat_index"]] for b, t in enumerate(targets)]
        gt = GroundTruth(gt_boxes, gt_tokens, [t["cat_index"] for t in targets], positive_map,
                         out.text_token_mask)  # fmt: skip
        num_boxes = self.num_boxes(gt_boxes, out.logits.device)
        named: dict[str, Predictions] = {}
        layers = out.layers()
        for i, layer in enumerate(layers):
            named["" if i == len(layers) - 1 else f"_{i}"] = layer
        if out.enc is not None:
            named["_enc"] = out.enc
        losses: dict[str, torch.Tensor] = {}
        with fp32_region(out.logits):
            for suffix, pred in named.items():
                indices = self.matcher(pred.logits, pred.boxes, gt_boxes, gt_tokens)
                for k, v in self._terms(pred, indices, gt, num_boxes).items():
                    losses[f"loss_{k}{suffix}"] = v
                if suffix == "":
                    last_indices = indices
            if out.dn is not None:
                n = len(out.dn.layers)
                for i, pred in enumerate(out.dn.layers):
                    suffix = "_dn" if i == n - 1 else f"_dn_{i}"
                    terms = self._dn_terms(pred, out.dn.meta, gt, num_boxes)
                    losses.update({f"loss_{k}{suffix}": v for k, v in terms.items()})
            total = sum(self.weight_of(k) * v for k, v in losses.items())
        with torch.no_grad():
            iou = matched_iou(out.boxes.float(), gt_boxes, last_indices)
        return {"loss": total, **losses, "matched_iou": iou}
