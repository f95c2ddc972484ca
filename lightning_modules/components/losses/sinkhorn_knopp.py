"""Sinkhorn-Knopp teacher targets (spec §4.3; the paper's final recipe, from SwAV)."""

import math

import torch
from torch import nn

from lightning_modules.components.losses.distributed import all_reduce_max, all_reduce_sum
from lightning_modules.components.losses.fp32 import fp32_region


def _logsumexp_over_samples(log_q: torch.Tensor) -> torch.Tensor:
    """(n_local, K) → (K,) log of each prototype's mass summed over all processes' samples.

    The all-reduced max is subtracted before ``exp``; a process without rows contributes −inf
    to the max and 0 to the sum.
    """
    n_local, k = log_q.shape
    local_max = log_q.amax(dim=0) if n_local else log_q.new_full((k,), float("-inf"))
    global_max = all_reduce_max(local_max)
    mass = all_reduce_sum((log_q - global_max).exp().sum(dim=0))
    return global_max + mass.log()


def _sinkhorn_log(t: torch.Tensor, temp: float, n_iterations: int, n_total: int) -> torch.Tensor:
    """Max-subtracted form: every normalisation done on logs, so no exp over- or underflows."""
    k = t.shape[1]
    log_q = t / temp  # (n_local, K); the reference's first Q /= sum(Q) is a constant shift that
    # the first prototype normalisation cancels, so it is skipped here.
    for _ in range(n_iterations):
        log_q = log_q - _logsumexp_over_samples(log_q) - math.log(k)  # prototype mass 1/K
        # sample mass 1/n_total; the final (Q·n_total) is then a softmax over prototypes
        log_q = log_q - log_q.logsumexp(dim=1, keepdim=True) - math.log(n_total)
    return (log_q + math.log(n_total)).exp()


def _sinkhorn_plain(t: torch.Tensor, temp: float, n_iterations: int, n_total: int) -> torch.Tensor:
    """The spec's pseudocode verbatim (overflows for t/τ > ~88); kept as the reference form."""
    k = t.shape[1]
    q = torch.exp(t / temp).T  # (K, n_local)
    q /= all_reduce_sum(q.sum())
    for _ in range(n_iterations):
        q /= all_reduce_sum(q.sum(dim=1, keepdim=True))
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= n_total
    return (q * n_total).T


@torch.no_grad()
def sinkhorn_knopp(
    teacher_logits: torch.Tensor,
    teacher_temp: float,
    n_iterations: int = 3,
    subtract_max: bool = True,
) -> torch.Tensor:
    """Teacher logits (n_local, K) of this process → fp32 targets (n_local, K), rows sum to 1.

    Alternately gives each prototype total mass 1/K (sums over samples all-reduced) and each
    sample mass 1/n_total (local sums), with ``n_total`` the all-reduced row count, so DINO
    (equal rows per process) and iBOT (unequal masked-token counts) share this function.
    Without a process group every all-reduce is the identity, so it runs in a single process
    (the reference's iBOT SK crashes there, PR #590).

    ``subtract_max=True`` (default) works on logs and subtracts the all-reduced max before
    every ``exp``. Subtracting a per-prototype constant is cancelled exactly by the prototype
    normalisation, so the result equals the plain form wherever that is finite, and stays
    finite for any logits (the reference's multi-process NaN, issue #360).
    """
    t = teacher_logits.float()
    n_local, k = t.shape
    n_total = int(all_reduce_sum(t.new_tensor([float(n_local)])).item())
    if n_total == 0:
        return t.new_zeros((0, k))
    solver = _sinkhorn_log if subtract_max else _sinkhorn_plain
    with fp32_region(t):
        return solver(t, teacher_temp, n_iterations, n_total)


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
