"""Token-level focal loss and box losses for grounding detection (spec §6, decision P6).

All on torchvision ops: ``sigmoid_focal_loss`` over (query, token) pairs, L1 on cxcywh and
``generalized_box_iou_loss`` on xyxy. Every term is a sum divided by ``num_boxes``. An optional
caption-name cross-entropy (not in GD) ranks a matched query's names against each other.
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


def name_cross_entropy(
    logits: torch.Tensor,
    positive_map: torch.Tensor,
    text_token_mask: torch.Tensor,
    queries: list[torch.Tensor],
    classes: list[torch.Tensor],
    num_boxes: float | torch.Tensor,
) -> torch.Tensor:
    """Softmax cross-entropy over each caption's category names for matched queries.

    logits (B, N, T); positive_map (B, C, T) 0/1 spans (all-zero rows are padding categories);
    text_token_mask (B, T); queries[b] (M_b,) query indices whose true category is classes[b]
    (M_b,) → Σ −log softmax_c(s_c)[class] / num_boxes, where a name's score s_c is the mean
    token logit over its span. The focal loss scores each token on its own, so a red sneaker's
    query is rewarded for "red" in "red seven" being low only token by token; this term asks
    directly that the whole right name outrank every other name in the caption.
    """
    span = positive_map.float()
    counts = span.sum(-1)  # (B, C)
    # padded tokens' logits are not masked by the head; zero them so they never enter a score
    real = logits.float().masked_fill(~text_token_mask[:, None, :], 0.0)
    scores = torch.einsum("bnt,bct->bnc", real, span) / counts.clamp(min=1.0)[:, None, :]
    scores = scores.masked_fill(counts[:, None, :] == 0, float("-inf"))
    total = logits.new_zeros((), dtype=torch.float32)
    for b, (q, c) in enumerate(zip(queries, classes, strict=True)):
        if len(q):
            total = total + F.cross_entropy(scores[b, q], c, reduction="sum")
    return total / num_boxes
