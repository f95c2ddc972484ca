"""Baseline selectors and unstructured magnitude pruning for matched comparisons (spec §7).

* L1-norm filter selection (Li et al., ICLR 2017): keep the producer filters of largest L1 norm.
* Random channels at given widths (Liu et al. 2019, "rethinking" control), seeded.
* Global unstructured magnitude pruning (``torch.nn.utils.prune.global_unstructured`` with
  ``L1Unstructured``) at a target % of *all* parameters, over all conv/linear weights. It only
  masks: no smaller model and no speed-up until made permanent (and even then only zeros).
"""

import torch
from torch import nn
from torch.nn.utils import prune


def l1_norm_select(producer_weight: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Sorted indices of the ``n_keep`` filters with the largest L1 norm.

    Args:
        producer_weight: (C_out, ...) weight of the producer layer; one row per channel.
    """
    _check_count(n_keep, producer_weight.shape[0])
    l1 = producer_weight.detach().abs().flatten(1).sum(1)
    return torch.sort(torch.argsort(l1, descending=True, stable=True)[:n_keep]).values


def random_select(n_channels: int, n_keep: int, seed: int) -> torch.Tensor:
    """Sorted indices of ``n_keep`` channels drawn uniformly without replacement (seeded)."""
    _check_count(n_keep, n_channels)
    gen = torch.Generator().manual_seed(seed)
    return torch.sort(torch.randperm(n_channels, generator=gen)[:n_keep]).values


def _check_count(n_keep: int, n_channels: int) -> None:
    if not 1 <= n_keep <= n_channels:
        raise ValueError(f"n_keep must lie in [1, {n_channels}], got {n_keep}")


def _prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def global_magnitude_prune(model: nn.Module, param_sparsity: float) -> int:
    """Mask the smallest-|w| conv/linear weights so that ``param_sparsity`` of all params go.

    The target is a fraction of *all* parameters (biases and BN γ, β included, spec §3), met by
    masking weights only. Masks live as ``weight_mask`` buffers (``weight_orig`` holds the values).

    Args:
        param_sparsity: target fraction in [0, 1) of the model's parameters to remove.

    Returns:
        The number of masked weights.
    """
    if not 0.0 <= param_sparsity < 1.0:
        raise ValueError(f"param_sparsity must lie in [0, 1), got {param_sparsity}")
    targets = _prunable_weights(model)
    n_total = sum(p.numel() for p in model.parameters())
    n_weights = sum(m.weight.numel() for m, _ in targets)
    n_remove = round(param_sparsity * n_total)
    if n_remove > n_weights:
        raise ValueError(
            f"{param_sparsity:.1%} of {n_total} params needs {n_remove} removals, "
            f"but conv/linear weights hold only {n_weights}"
        )
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=n_remove)
    return n_remove


def make_magnitude_pruning_permanent(model: nn.Module) -> None:
    """``prune.remove`` on every masked weight: values become mask·orig, masks are dropped."""
    for module, name in _prunable_weights(model):
        if prune.is_pruned(module) and hasattr(module, f"{name}_mask"):
            prune.remove(module, name)
