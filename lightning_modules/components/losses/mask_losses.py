"""Mask losses on sampled points (Mask2Former / Mask DINO; spec §12.3).

Instead of full-resolution masks, each (prediction, ground truth) pair is compared at N points:
``importance · N`` of the most uncertain (|logit| smallest) among ``oversample · N`` random points
plus ``(1 − importance) · N`` uniform ones. Values at the points come from ``grid_sample``
(bilinear, ``align_corners=False``), so a point at a pixel centre reads that pixel exactly and
sampling every pixel centre reproduces the full-mask loss. Terms: mean BCE per mask and
Dice = 1 − (2Σpt + 1)/(Σp + Σt + 1), each summed over masks and divided by ``num_masks``.
"""

import math

import torch
import torch.nn.functional as F


def point_sample(maps: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """maps (N, H, W), points (N, P, 2) as (x, y) in [0, 1] of the map → values (N, P)."""
    grid = 2.0 * points[:, :, None].to(maps.dtype) - 1.0  # (N, P, 1, 2)
    return F.grid_sample(maps[:, None], grid, mode="bilinear", align_corners=False)[:, 0, :, 0]


def pixel_centre_points(height: int, width: int, n: int = 1) -> torch.Tensor:
    """Every pixel centre of an (height, width) map as (n, height·width, 2) normalised (x, y)."""
    ys = (torch.arange(height, dtype=torch.float32) + 0.5) / height
    xs = (torch.arange(width, dtype=torch.float32) + 0.5) / width
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y], -1).view(1, -1, 2).expand(n, -1, -1)


@torch.no_grad()
def uncertain_points(logits: torch.Tensor, num_points: int, oversample: float,
                     importance: float, generator: torch.Generator | None = None,
                     scale: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Mask2Former's importance sampling → points (N, num_points, 2) in [0, 1].

    logits (N, h, w); points live in the frame of the ground truth, which covers the fraction
    ``scale`` (N, 2) (x, y) of the prediction map (the unpadded part; default 1). Random draws
    come from ``generator`` (CPU), so a training step is reproducible.
    """
    n = logits.shape[0]
    scale = logits.new_ones(n, 2) if scale is None else scale.to(logits.dtype)
    n_random = math.ceil(num_points * oversample)
    rand = torch.rand(n, n_random, 2, generator=generator).to(logits.device, logits.dtype)
    uncertainty = -point_sample(logits, rand * scale[:, None]).abs()
    k = int(importance * num_points)
    top = uncertainty.topk(k, dim=1).indices
    chosen = rand.gather(1, top[..., None].expand(-1, -1, 2))
    extra = torch.rand(n, num_points - k, 2, generator=generator).to(logits.device, logits.dtype)
    return torch.cat([chosen, extra], 1)


def mask_losses_at_points(pred_logits: torch.Tensor, gt_masks: torch.Tensor,
                          points: torch.Tensor, num_masks: float | torch.Tensor,
                          scale: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """pred_logits (N, h, w), gt_masks (N, H, W) 0/1, points (N, P, 2) in the ground-truth frame,
    scale (N, 2): the fraction of the prediction map that frame covers → (BCE, Dice)."""
    pred_points = points if scale is None else points * scale[:, None].to(points.dtype)
    logits = point_sample(pred_logits.float(), pred_points.float())
    target = point_sample(gt_masks.float(), points.float())
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(1)
    p = logits.sigmoid()
    dice = 1 - (2 * (p * target).sum(1) + 1) / (p.sum(1) + target.sum(1) + 1)
    return bce.sum() / num_masks, dice.sum() / num_masks
