"""Budgeted mode: per-layer kept counts from a keep fraction or a target % of params (spec §2.6).

The parameter count of a channel-pruned network depends on its widths only, so a uniform keep
fraction p for a target parameter sparsity is bisected on the analytic count (networks are
built on the meta device: no memory, no solver runs).
"""

from collections.abc import Sequence

import torch
from torch import nn

from lightning_modules.components.sparse.channel_surgery import build_pruned, widths_of
from lightning_modules.components.sparse.counting import count_params
from lightning_modules.components.sparse.keep_rules import n_keep_for_frac
from lightning_modules.components.sparse.prunable_pairs import prunable_pairs
from lightning_modules.components.sparse.prune_config import PruneConfig


def producer_widths(model: nn.Module) -> list[int]:
    """Current width of every prunable producer, in pair order."""
    return [model.get_submodule(p.producer).weight.shape[0] for p in prunable_pairs(model)]


def widths_with_counts(model: nn.Module, counts: Sequence[int]) -> list[int | str]:
    """Constructor widths of ``model`` with the prunable producers set to ``counts``.

    For every supported net the prunable producers are, in order, the integer entries of
    ``widths_of`` (LeNet hidden widths, VGG plan convs, ResNet internal widths).
    """
    widths = list(widths_of(model))
    slots = [i for i, v in enumerate(widths) if v != "M"]
    if len(slots) != len(counts):
        raise ValueError(f"expected {len(slots)} per-layer counts, got {len(counts)}")
    for slot, count in zip(slots, counts, strict=True):
        widths[slot] = int(count)
    return widths


def params_for_counts(model: nn.Module, counts: Sequence[int]) -> int:
    """Parameter count of ``model`` rebuilt with the given producer widths (meta device)."""
    with torch.device("meta"):
        slim = build_pruned(model, widths_with_counts(model, counts))
    return count_params(slim)


def counts_for_frac(model: nn.Module, keep_frac: float, cfg: PruneConfig) -> list[int]:
    """⌈p·C⌉ per prunable producer, never below the per-layer floor."""
    return [n_keep_for_frac(c, keep_frac, cfg) for c in producer_widths(model)]


def keep_frac_for_param_sparsity(
    model: nn.Module, target: float, cfg: PruneConfig, steps: int = 50
) -> float:
    """Largest uniform keep fraction p whose widths remove at least ``target`` of the params.

    Raises:
        ValueError: if the target is outside [0, 1) or unreachable with the per-layer floors.
    """
    if not 0.0 <= target < 1.0:
        raise ValueError(f"target parameter sparsity must lie in [0, 1), got {target}")
    dense = count_params(model)
    goal = (1.0 - target) * dense

    def fits(p: float) -> bool:
        return params_for_counts(model, counts_for_frac(model, p, cfg)) <= goal

    if fits(1.0):
        return 1.0
    if not fits(1e-12):
        floor = params_for_counts(model, counts_for_frac(model, 1e-12, cfg))
        raise ValueError(
            f"target parameter sparsity {target:.2%} is unreachable: the per-layer minimum "
            f"widths already keep {floor} of {dense} params ({1 - floor / dense:.2%} sparsity)"
        )
    lo, hi = 1e-12, 1.0
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo
