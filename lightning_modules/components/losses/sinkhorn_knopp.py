"""Sinkhorn-Knopp teacher targets (spec §4.3; the paper's final recipe, from SwAV)."""

import torch
from torch import nn

from lightning_modules.components.losses.distributed import all_reduce_max, all_reduce_sum


@torch.no_grad()
def sinkhorn_knopp(
    teacher_logits: torch.Tensor,
    teacher_temp: float,
    n_iterations: int = 3,
    subtract_max: bool = True,
) -> torch.Tensor:
    """Teacher logits (n_local, K) of this process → fp32 targets (n_local, K), rows sum to 1.

    Alternately gives each prototype total mass 1/K (sums over samples all-reduced) and each
    sample mass 1/n_total (local sums), with ``n_total`` the all-reduced row count. DINO (equal
    rows per process) and iBOT (unequal masked-token counts) therefore share this function.

    ``subtract_max`` subtracts each prototype's max over all processes before ``exp``: it is a
    per-prototype rescaling that the first prototype normalisation cancels exactly, and it keeps
    ``exp(t/τ)`` finite for any logits (the reference's NaN, issue #360). Without a process group
    every all-reduce is the identity, so this runs in a single process (PR #590).
    """
    t = teacher_logits.float()
    n_local, k = t.shape
    n_total = int(all_reduce_sum(t.new_tensor([float(n_local)])).item())
    if n_total == 0:
        return t.new_zeros((0, k))
    if subtract_max:
        # A process without rows contributes −inf, the identity of MAX.
        local_max = t.amax(dim=0) if n_local else t.new_full((k,), float("-inf"))
        t = t - all_reduce_max(local_max)
    q = torch.exp(t / teacher_temp).T  # (K, n_local)
    q /= all_reduce_sum(q.sum())
    for _ in range(n_iterations):
        q /= all_reduce_sum(q.sum(dim=1, keepdim=True))  # each prototype: mass 1 ...
        q /= k  # ... then 1/K
        q /= q.sum(dim=0, keepdim=True)  # each sample: mass 1 (columns are local) ...
        q /= n_total  # ... then 1/n_total
    return (q * n_total).T


class SinkhornKnopp(nn.Module):
    """Module form of :func:`sinkhorn_knopp`, interchangeable with ``Centering``.

    ``update`` is a no-op: Sinkhorn-Knopp keeps no center.
    """

    def __init__(self, n_iterations: int = 3) -> None:
        super().__init__()
        self.n_iterations = n_iterations

    def forward(self, teacher_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """Teacher logits (n, K) → fp32 targets (n, K)."""
        return sinkhorn_knopp(teacher_logits, teacher_temp, self.n_iterations)

    def update(self, teacher_logits: torch.Tensor) -> None:
        """Nothing to update; present so the LitModule can treat both target modes alike."""
