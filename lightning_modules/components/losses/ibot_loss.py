"""iBOT masked-patch loss (spec §4.4; reference ``dinov2/loss/ibot_patch_loss.py``)."""

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.components.losses.fp32 import fp32_region


class iBOTPatchLoss(nn.Module):
    """``L = (1/n_crops) Σ_j w_j·CE(p_j, s_j)`` over the masked patch tokens j.

    With ``w_j = 1/max(1, #masked in crop(j))`` this is the mean over **all** ``n_crops`` (2B)
    global crops of each crop's mean CE over its masked patches; unmasked crops add 0 but count
    in the denominator, so the effective scale is about 0.5. Computed in fp32.
    """

    def __init__(self, student_temp: float = 0.1) -> None:
        super().__init__()
        self.student_temp = student_temp

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_probs: torch.Tensor,
        weights: torch.Tensor,
        n_crops: int,
    ) -> torch.Tensor:
        """Scalar loss.

        Args:
            student_logits: (n_m, K) student iBOT logits at the masked positions.
            teacher_probs: (n_m, K) teacher targets at the same positions.
            weights: (n_m,) per-token ``w_j`` from the collate.
            n_crops: number of global crops in this process's batch (2B), masked or not.
        """
        if student_logits.shape != teacher_probs.shape or weights.shape != student_logits.shape[:1]:
            raise ValueError(
                f"shape mismatch: student {tuple(student_logits.shape)}, teacher "
                f"{tuple(teacher_probs.shape)}, weights {tuple(weights.shape)}"
            )
        with fp32_region(student_logits):
            log_s = F.log_softmax(student_logits.float() / self.student_temp, dim=-1)
            ce = -(teacher_probs.float() * log_s).sum(dim=-1)  # (n_m,)
            return (ce * weights.float()).sum() / n_crops
