"""DINO CLS-token loss (spec §4.2; reference ``dinov2/loss/dino_clstoken_loss.py``)."""

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.components.losses.fp32 import fp32_region


class DINOLoss(nn.Module):
    """Cross-entropy between teacher CLS targets and student CLS logits, cross-view only.

    With ``n_local`` local crops and the 2 global crops there are
    ``n_terms = 2·n_local + 2`` (teacher, student) pairs (18 for 8 locals); every pair is a
    batch mean of ``CE(p, s) = −Σ_k p_k·log_softmax(s/τ_s)_k`` and carries weight ``1/n_terms``:

    - ``local  = (1/n_terms) Σ_i Σ_g mean_b CE(p_g[b], s_local_i[b])``
    - ``global = (1/n_terms) (CE(t2→s1) + CE(t1→s2))``: the teacher halves are **swapped** here,
      so callers pass targets in crop order; there is no same-view term.

    Computed in fp32 whatever the input dtype.
    """

    def __init__(self, student_temp: float = 0.1) -> None:
        super().__init__()
        self.student_temp = student_temp

    @staticmethod
    def swap_halves(teacher_probs: torch.Tensor) -> torch.Tensor:
        """``[p(crop1); p(crop2)]`` (2B, K) → ``[p(crop2); p(crop1)]``."""
        p1, p2 = teacher_probs.chunk(2)
        return torch.cat([p2, p1])

    def forward(
        self,
        student_global: torch.Tensor,
        student_local: torch.Tensor | None,
        teacher_probs: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Losses from crop-major logits.

        Args:
            student_global: (2B, K) student logits of the (masked) global crops,
                ``[crop1 of all B; crop2 of all B]``.
            student_local: (n_local·B, K) student logits of the local crops, crop-major, or
                None / an empty tensor when there are no local crops.
            teacher_probs: (2B, K) teacher targets in crop order (unswapped).

        Returns:
            ``{"local": scalar, "global": scalar}``; the DINO loss is their sum.
        """
        with fp32_region(student_global):
            return self._forward(student_global, student_local, teacher_probs)

    def _forward(
        self,
        student_global: torch.Tensor,
        student_local: torch.Tensor | None,
        teacher_probs: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        if teacher_probs.shape[0] % 2 or teacher_probs.shape != student_global.shape:
            raise ValueError(
                f"expected (2B, K) student and teacher global logits, got "
                f"{tuple(student_global.shape)} and {tuple(teacher_probs.shape)}"
            )
        batch, k = teacher_probs.shape[0] // 2, teacher_probs.shape[1]
        n_local = 0 if student_local is None else student_local.shape[0] // max(batch, 1)
        if student_local is not None and student_local.shape[0] != n_local * batch:
            raise ValueError(
                f"local logits {tuple(student_local.shape)} are not (n_local·{batch}, K)"
            )
        n_terms = 2 * n_local + 2
        targets = teacher_probs.float()

        log_global = F.log_softmax(student_global.float() / self.student_temp, dim=-1)
        ce_global = -(self.swap_halves(targets) * log_global).sum()
        loss_global = ce_global / (batch * n_terms)

        loss_local = log_global.new_zeros(())
        if n_local:
            log_local = F.log_softmax(student_local.float() / self.student_temp, dim=-1)
            # every local crop i against both teacher globals g: Σ_i Σ_g Σ_b p_g[b]·log s_i[b]
            ce_local = -torch.einsum(
                "gbk,ibk->", targets.view(2, batch, k), log_local.view(n_local, batch, k)
            )
            loss_local = ce_local / (batch * n_terms)
        return {"local": loss_local, "global": loss_global}
