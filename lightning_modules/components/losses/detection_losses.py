"""Token-level focal loss and box losses for grounding detection (spec §6, decision P6).

All on torchvision ops: ``sigmoid_focal_loss`` over (query, token) pairs, L1 on cxcywh and
``generalized_box_iou_loss`` on xyxy. Every term is a sum divided by ``num_boxes``.
"""

import torch
import torch.nn.functional as F
from torchvision.ops import box_convert, generalized_box_iou_loss, sigmoid_focal_loss


def token_focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    text_token_mask: torch.Tensor,
    num_boxes: float | torch.Tensor,
    query_mask: torch.Tensor | None = None,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> torch.Tensor:
    """logits, targets (B, N, T); text_token_mask (B, T) True = real; query_mask (B, N) True =
    counted (None: every query) → Σ focal / num_boxes over the selected (query, real token) pairs.

    Padded tokens are *selected out* (``masked_select``), so their logits never reach the loss:
    changing them changes neither the value nor any gradient (decision P5).
    """
    valid = text_token_mask[:, None, :].expand_as(logits)
    if query_mask is not None:
        valid = valid & query_mask[:, :, None]
    loss = sigmoid_focal_loss(
        logits[valid].float(), targets[valid].float(), alpha=alpha, gamma=gamma, reduction="sum"
    )
    return loss / num_boxes


def box_losses(
    boxes: torch.Tensor, target_boxes: torch.Tensor, num_boxes: float | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """boxes, target_boxes (N, 4) cxcywh normalised → (Σ L1, Σ (1 − GIoU)), each / num_boxes."""
    boxes, target_boxes = boxes.float(), target_boxes.float()
    l1 = F.l1_loss(boxes, target_boxes, reduction="sum")
    giou = generalized_box_iou_loss(
        box_convert(boxes, "cxcywh", "xyxy"),
        box_convert(target_boxes, "cxcywh", "xyxy"),
        reduction="sum",
    )
    return l1 / num_boxes, giou / num_boxes
