"""Set criterion with the DINO-X extension heads' losses (spec §12.3-12.4).

Adds to ``SetCriterion``'s terms, on the same Hungarian matching (box and class costs only,
decision P6; the matcher is re-run per layer, which is deterministic and cheap):
``loss_mask_bce`` / ``loss_mask_dice`` (+ ``_{i}`` for earlier decoder layers) on sampled
points (``mask_losses``), and ``loss_kpt_l1`` / ``loss_kpt_oks`` / ``loss_kpt_vis`` (+ ``_{i}``
for earlier keypoint layers) on the last decoder layer's matched queries. Heads that did not run
add no terms.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from lightning_modules.components.detection.matcher import HungarianMatcher
from lightning_modules.components.detection.outputs import DetectorOutput
from lightning_modules.components.losses.keypoint_losses import keypoint_losses
from lightning_modules.components.losses.mask_losses import (
    mask_losses_at_points,
    uncertain_points,
)
from lightning_modules.components.losses.set_criterion import Indices, SetCriterion

EXTRA_WEIGHTS = {"mask_bce": 5.0, "mask_dice": 5.0, "kpt_l1": 5.0, "kpt_oks": 2.0, "kpt_vis": 1.0}


class DINOXCriterion(SetCriterion):
    """Args (beyond ``SetCriterion``'s):
    mask: {num_points (N per mask), oversample (3.0), importance (0.75)}.
    keypoint_sigmas: per-keypoint OKS constants σ_k (κ_k = 2σ_k).
    """

    def __init__(self, matcher: HungarianMatcher, weights: Mapping[str, float] | None = None,
                 focal: Mapping[str, float] | None = None, mask: Mapping[str, Any] | None = None,
                 keypoint_sigmas: Sequence[float] = (0.05,) * 5) -> None:  # fmt: skip
        super().__init__(matcher, {**EXTRA_WEIGHTS, **dict(weights or {})}, focal)
        self.mask = {"num_points": 1024, "oversample": 3.0, "importance": 0.75, **dict(mask or {})}
        self.register_buffer("sigmas", torch.tensor([float(s) for s in keypoint_sigmas]),
                             persistent=False)  # fmt: skip

    def weight_of(self, name: str) -> float:
        """Weight of a term such as ``loss_mask_dice_0``: the longest weight key it starts with."""
        stem = name.removeprefix("loss_")
        keys = [k for k in self.weights if stem == k or stem.startswith(k + "_")]
        if not keys:
            raise KeyError(f"no weight for loss term {name!r}; weights: {sorted(self.weights)}")
        return float(self.weights[max(keys, key=len)])

    def forward(self, out: DetectorOutput, targets: list[dict[str, Any]],
                positive_map: torch.Tensor,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
        """As ``SetCriterion``; ``generator`` drives the mask point sampling (reproducible)."""
        losses = super().forward(out, targets, positive_map)
        if out.masks is None and out.keypoints is None:
            return losses
        gt_boxes = [t["boxes"] for t in targets]
        gt_tokens = [positive_map[b, t["cat_index"]] for b, t in enumerate(targets)]
        num_boxes = self.num_boxes(gt_boxes, out.logits.device)
        layers = out.layers()
        extra: dict[str, torch.Tensor] = {}
        with torch.autocast(out.logits.device.type, enabled=False):
            for i, pred in enumerate(layers):
                suffix = "" if i == len(layers) - 1 else f"_{i}"
                needs_kpt = out.keypoints is not None and suffix == ""
                if pred.masks is None and not needs_kpt:
                    continue
                indices = self.matcher(pred.logits, pred.boxes, gt_boxes, gt_tokens)
                if pred.masks is not None:
                    bce, dice = self._mask_terms(pred.masks, targets, indices, num_boxes, generator)
                    extra[f"loss_mask_bce{suffix}"], extra[f"loss_mask_dice{suffix}"] = bce, dice
                if needs_kpt:
                    kpt_layers = [*out.keypoint_aux, out.keypoints]
                    for j, kpts in enumerate(kpt_layers):
                        s = "" if j == len(kpt_layers) - 1 else f"_{j}"
                        terms = self._keypoint_terms(kpts, targets, indices, num_boxes)
                        extra.update({f"loss_kpt_{k}{s}": v for k, v in terms.items()})
        total = losses["loss"] + sum(self.weight_of(k) * v for k, v in extra.items())
        return {**losses, **extra, "loss": total}

    def _mask_terms(self, masks: torch.Tensor, targets: list[dict[str, Any]], indices: Indices,
                    num_boxes: torch.Tensor, generator: torch.Generator | None
                    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """masks (B, Q, h, w) logits over the padded batch at stride 4; per image the GT masks
        (G_b, H_b, W_b) cover the unpadded part, the fraction ``scale`` of the prediction."""
        bce = dice = masks.new_zeros((), dtype=torch.float32)
        h4, w4 = masks.shape[-2:]
        for b, (q, g) in enumerate(indices):
            if "masks" not in targets[b]:
                raise ValueError("the mask head is on but targets have no masks: "
                                 "set data.with_masks=true")  # fmt: skip
            if len(q) == 0:
                continue
            gt = targets[b]["masks"][g.to(targets[b]["masks"].device)]
            pred = masks[b, q.to(masks.device)].float()
            hb, wb = gt.shape[-2:]
            scale = pred.new_tensor([wb / (4 * w4), hb / (4 * h4)]).expand(len(q), 2)
            points = uncertain_points(pred.detach(), self.mask["num_points"],
                                      self.mask["oversample"], self.mask["importance"],
                                      generator, scale)  # fmt: skip
            b_bce, b_dice = mask_losses_at_points(pred, gt, points, num_boxes, scale)
            bce, dice = bce + b_bce, dice + b_dice
        return bce, dice

    def _keypoint_terms(self, kpts: torch.Tensor, targets: list[dict[str, Any]],
                        indices: Indices, num_boxes: torch.Tensor) -> dict[str, torch.Tensor]:  # fmt: skip
        """kpts (B, Q, K, 3) → L1, OKS and visibility terms over the matched pairs."""
        pred, gt, area = [], [], []
        for b, (q, g) in enumerate(indices):
            if "keypoints" not in targets[b]:
                raise ValueError("the keypoint head is on but targets have no keypoints: "
                                 "set data.with_keypoints=true")  # fmt: skip
            pred.append(kpts[b, q.to(kpts.device)])
            gt.append(targets[b]["keypoints"][g.to(kpts.device)])
            area.append(targets[b]["boxes"][g.to(kpts.device)][:, 2:].prod(-1))
        pred, gt, area = torch.cat(pred), torch.cat(gt).to(kpts.dtype), torch.cat(area)
        if gt.shape[1] != len(self.sigmas):
            raise ValueError(f"targets have {gt.shape[1]} keypoints but keypoint_sigmas has "
                             f"{len(self.sigmas)} values")  # fmt: skip
        return keypoint_losses(pred, gt, area, self.sigmas, num_boxes)
