"""Teacher centering: softmax of centred teacher logits, EMA center (spec §4.3, DINO default)."""

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.components.losses.distributed import all_reduce_sum
from lightning_modules.components.losses.fp32 import fp32_region


class Centering(nn.Module):
    """``p = softmax((t − c)/τ_t)`` with an EMA center ``c`` (1, K) kept as a buffer.

    Order (as the reference's lazy async all-reduce): at step n call ``forward`` first, then
    ``update`` with the same teacher logits, so step n uses the center updated through step n−1
    and step 0 uses c = 0. The center is a registered buffer, so it is checkpointed with the
    module (spec D6) and is not touched by the parameter EMA.

    Update: ``c ← m·c + (1 − m)·mean_processes(mean_rows(t))``, the **unweighted** mean of the
    per-process row means. For the DINO branch every process has 2B rows, so this equals the
    all-reduced row sum over (rows per process · world); for the iBOT branch it is the reference
    rule, where per-process masked-token counts differ. Processes without rows are skipped.
    """

    center: torch.Tensor

    def __init__(self, num_prototypes: int, momentum: float = 0.9) -> None:
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"center momentum must be in [0, 1], got {momentum}")
        self.momentum = momentum
        self.register_buffer("center", torch.zeros(1, num_prototypes))

    def forward(self, teacher_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """Teacher logits (n, K) → fp32 targets (n, K), rows summing to 1. Does not update."""
        with fp32_region(teacher_logits):
            centred = teacher_logits.float() - self.center.float()
            return F.softmax(centred / teacher_temp, dim=-1)

    @torch.no_grad()
    def update(self, teacher_logits: torch.Tensor) -> None:
        """Fold this step's teacher logits (n, K) into the center (one all-reduce)."""
        n = teacher_logits.shape[0]
        local_mean = teacher_logits.float().sum(dim=0) / max(n, 1)  # (K,)
        # Append a "this process has rows" flag so one all-reduce gives both sums.
        has_rows = local_mean.new_tensor([1.0 if n > 0 else 0.0])
        stats = all_reduce_sum(torch.cat([local_mean, has_rows]))
        n_processes = stats[-1]
        if n_processes.item() == 0:
            return
        batch_center = (stats[:-1] / n_processes).view_as(self.center)
        self.center.mul_(self.momentum).add_(
            batch_center.to(self.center.dtype), alpha=1 - self.momentum
        )
