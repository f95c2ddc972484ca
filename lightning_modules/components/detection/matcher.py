"""Hungarian matching of queries to ground-truth boxes for token-level grounding (spec §6, P6).

Costs (Open-GroundingDino ``matcher.py``; mmdet ``BinaryFocalLossCost``): class cost = mean over
the GT's positive tokens of the focal cost ``α(1−p)^γ(−log p) − (1−α)p^γ(−log(1−p))``; L1 on
normalised cxcywh; GIoU on xyxy. Assignment by ``scipy.optimize.linear_sum_assignment``.
"""

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou

#: Finite stand-in for NaN/inf costs: such pairs are never chosen while a finite one exists.
NONFINITE_COST = 1e8
_EPS = 1e-8  # inside the logs, so a saturated sigmoid gives a large finite cost, not inf


def focal_token_cost(logits: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """logits (..., T) → per-token focal cost (..., T) of calling that token positive."""
    p = logits.sigmoid()
    pos = alpha * (1 - p) ** gamma * -(p + _EPS).log()
    neg = (1 - alpha) * p**gamma * -(1 - p + _EPS).log()
    return pos - neg


class HungarianMatcher(nn.Module):
    """One-to-one matching per image; runs without gradients on CPU float.

    Args:
        cost_class, cost_bbox, cost_giou: weights of the class, L1 and GIoU costs (2 / 5 / 2).
        alpha, gamma: focal cost parameters (0.25 / 2).
    """

    def __init__(
        self,
        cost_class: float = 2.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        alpha: float = 0.25,
        gamma: float = 2.0,
    ) -> None:
        super().__init__()
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou
        self.alpha, self.gamma = alpha, gamma

    def cost_matrix(
        self,
        logits: torch.Tensor,
        boxes: torch.Tensor,
        gt_boxes: torch.Tensor,
        gt_tokens: torch.Tensor,
    ) -> torch.Tensor:
        """Weighted cost (Q, G) for one image.

        logits: (Q, T) raw; boxes: (Q, 4) cxcywh; gt_boxes: (G, 4) cxcywh; gt_tokens: (G, T) 0/1
        positive map of each GT's category (padding tokens are never positive, so they never
        enter the class cost).
        """
        token_cost = focal_token_cost(logits, self.alpha, self.gamma)  # (Q, T)
        weights = gt_tokens / gt_tokens.sum(-1, keepdim=True).clamp(min=1)  # mean over tokens
        # A non-finite token cost must reach only the GTs owning that token, but in the matmul
        # 0·NaN = NaN would spread it to every GT: multiply finite values, then mark the pairs
        # that touch a non-finite token.
        finite = torch.isfinite(token_cost)
        class_cost = token_cost.masked_fill(~finite, 0.0) @ weights.T
        touched = (~finite).float() @ (gt_tokens > 0).float().T > 0
        class_cost = class_cost.masked_fill(touched, float("nan"))
        l1_cost = torch.cdist(boxes, gt_boxes, p=1)
        giou_cost = -generalized_box_iou(
            box_convert(boxes, "cxcywh", "xyxy"), box_convert(gt_boxes, "cxcywh", "xyxy")
        )
        return self.cost_class * class_cost + self.cost_bbox * l1_cost + self.cost_giou * giou_cost

    @torch.no_grad()
    def forward(
        self,
        logits: torch.Tensor,
        boxes: torch.Tensor,
        gt_boxes: list[torch.Tensor],
        gt_tokens: list[torch.Tensor],
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """logits (B, Q, T), boxes (B, Q, 4) cxcywh; per image gt_boxes[b] (G_b, 4) cxcywh and
        gt_tokens[b] (G_b, T) → per image (query_idx, gt_idx), each (min(Q, G_b),) int64,
        sorted by query index. An image with G_b = 0 gets two empty index tensors.
        """
        out = []
        for b in range(logits.shape[0]):
            if gt_boxes[b].shape[0] == 0:
                empty = torch.empty(0, dtype=torch.int64)
                out.append((empty, empty.clone()))
                continue
            cost = self.cost_matrix(
                logits[b].detach().float().cpu(),
                boxes[b].detach().float().cpu(),
                gt_boxes[b].detach().float().cpu(),
                gt_tokens[b].detach().float().cpu(),
            )
            bad_rows = (~torch.isfinite(cost)).all(dim=1).nonzero().flatten()
            if bad_rows.numel():
                raise ValueError(
                    f"image {b}: queries {bad_rows.tolist()[:10]} have no finite matching cost "
                    "(NaN/inf predictions)"
                )
            cost = torch.nan_to_num(
                cost, nan=NONFINITE_COST, posinf=NONFINITE_COST, neginf=NONFINITE_COST
            )
            rows, cols = linear_sum_assignment(cost.numpy())
            out.append(
                (torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64))
            )
        return out
