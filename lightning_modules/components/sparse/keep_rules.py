"""Which channels to keep, read off the selection vector w (spec §2.6, R6).

Automatic mode keeps c iff C_in·w_c ≥ τ (``threshold``) or the smallest set holding w-mass
≥ 1 − δ (``mass``); budgeted mode keeps the top ⌈p·C_in⌉. Every rule keeps at least
max(min_channels, ⌈min_keep_frac·C_in⌉) channels, so no layer can collapse.
"""

import math

import torch

from lightning_modules.components.sparse.prune_config import PruneConfig


def min_keep(n_channels: int, cfg: PruneConfig) -> int:
    """The per-layer floor on kept channels (never above the layer's width)."""
    floor = max(cfg.min_channels, math.ceil(cfg.min_keep_frac * n_channels - 1e-9))
    return min(n_channels, max(1, floor))


def n_keep_for_frac(n_channels: int, keep_frac: float, cfg: PruneConfig) -> int:
    """⌈p·C_in⌉ (guarded against float round-up), clamped to [min_keep, C_in]."""
    wanted = math.ceil(keep_frac * n_channels - 1e-9)
    return min(n_channels, max(min_keep(n_channels, cfg), wanted))


def select_channels(w: torch.Tensor, cfg: PruneConfig, n_keep: int | None = None) -> torch.Tensor:
    """Indices (sorted, int64) of the kept channels.

    Args:
        w: (C_in,) importances on the simplex (any non-negative scores work for top-k).
        n_keep: explicit kept count (e.g. widths matched to another run); overrides the rule.
    """
    n = w.numel()
    order = torch.argsort(w, descending=True, stable=True)
    if n_keep is not None:
        k = n_keep
    elif cfg.mode == "budget" and cfg.keep_frac is not None:
        k = n_keep_for_frac(n, cfg.keep_frac, cfg)
    elif cfg.mode == "budget":
        raise ValueError("budget mode with target_param_sparsity needs explicit per-layer counts")
    elif cfg.keep_rule == "threshold":
        k = int((n * w >= cfg.tau).sum())
    else:
        mass = torch.cumsum(w[order], 0) / w.sum()
        k = int(torch.searchsorted(mass, torch.tensor(1.0 - cfg.keep_mass_delta, dtype=w.dtype)))
        k += 1
    k = min(n, max(k, min_keep(n, cfg)))
    return torch.sort(order[:k]).values
