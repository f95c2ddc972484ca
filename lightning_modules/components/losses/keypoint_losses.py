"""Keypoint losses (ED-Pose; spec §12.4): L1 on visible keypoints, 1 − OKS, visibility BCE.

OKS follows the COCO definition (``pycocotools.cocoeval.computeOks``): per keypoint
``exp(−d² / (2 · s² · κ²))`` with κ = 2σ (σ: the per-keypoint constant), s² the object area,
averaged over the keypoints visible in the ground truth.
"""

import torch
import torch.nn.functional as F


def object_keypoint_similarity(pred_xy: torch.Tensor, gt_xy: torch.Tensor, visible: torch.Tensor,
                               area: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """pred_xy, gt_xy (N, K, 2); visible (N, K) bool; area (N,) s² in the units of xy²;
    sigmas (K,) → OKS (N,) in [0, 1] (0 for an instance without visible keypoints)."""
    d2 = ((pred_xy.float() - gt_xy.float()) ** 2).sum(-1)
    kappa2 = (2 * sigmas.float().to(d2.device)) ** 2
    e = d2 / (2 * area.float()[:, None].clamp(min=torch.finfo(torch.float32).eps) * kappa2)
    vis = visible.float()
    return (torch.exp(-e) * vis).sum(-1) / vis.sum(-1).clamp(min=1)


def keypoint_losses(pred: torch.Tensor, gt: torch.Tensor, area: torch.Tensor,
                    sigmas: torch.Tensor, num_boxes: float | torch.Tensor
                    ) -> dict[str, torch.Tensor]:  # fmt: skip
    """pred (N, K, 3) (x, y, visibility logit); gt (N, K, 3) (x, y, v) with v > 0 = labelled;
    area (N,) normalised box areas → {"l1", "oks", "vis"}, each summed and / num_boxes."""
    visible = gt[..., 2] > 0
    l1 = (F.l1_loss(pred[..., :2].float(), gt[..., :2].float(), reduction="none").sum(-1)
          * visible).sum()  # fmt: skip
    oks = object_keypoint_similarity(pred[..., :2], gt[..., :2], visible, area, sigmas)
    has = visible.any(-1).float()
    vis = F.binary_cross_entropy_with_logits(
        pred[..., 2].float(), visible.float(), reduction="none"
    ).mean(-1)
    return {"l1": l1 / num_boxes, "oks": ((1 - oks) * has).sum() / num_boxes,
            "vis": vis.sum() / num_boxes}  # fmt: skip
