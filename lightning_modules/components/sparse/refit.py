"""Weights of the consumer on the kept input channels, and its intercept (spec §2.6).

``plain`` (default): least squares on the kept columns, ridge 1e-6·v_x for conditioning only.
``weighted``: the Λ-step with w fixed on the kept set, B' = Λ·D(w). ``none``: Λ·D(w) from the
solver restricted to the kept columns. In all cases b' = μ_y − B'·μ_x,kept.
"""

import torch

from lightning_modules.components.sparse.layer_stats import LayerStats
from lightning_modules.components.sparse.ridge import ridge_solve

PLAIN_RIDGE = 1e-6


def kept_columns(kept: torch.Tensor, group_size: int) -> torch.Tensor:
    """Column indices (|K|·g,) of the kept channels; a channel owns g consecutive columns."""
    offsets = torch.arange(group_size, device=kept.device)
    return (kept.unsqueeze(1) * group_size + offsets).flatten()


def refit_weights(
    stats: LayerStats,
    kept: torch.Tensor,
    how: str = "plain",
    lam: torch.Tensor | None = None,
    w: torch.Tensor | None = None,
    lam2: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Refit weights B' (C_out, |K|·g) and intercept b' (C_out,) on the kept channels.

    Args:
        kept: (|K|,) kept channel indices.
        how: "plain", "weighted" (needs w, lam2) or "none" (needs lam (C_out, D) and w (C_in,)).
    """
    cols = kept_columns(kept.to(stats.G.device), stats.group_size)
    g_kk = stats.G[cols][:, cols]
    c_k = stats.C_xy[cols]
    if how == "plain":
        weight = ridge_solve(g_kk, c_k, PLAIN_RIDGE * stats.v_x).T
    elif how in ("weighted", "none"):
        if w is None or (how == "none" and lam is None):
            raise ValueError(f"refit={how!r} needs the solver's w (and Λ for 'none')")
        d = w.repeat_interleave(stats.group_size)[cols]
        if how == "weighted":
            lam_t = ridge_solve(d[:, None] * g_kk * d[None, :], d[:, None] * c_k, lam2)
            weight = (lam_t * d[:, None]).T
        else:
            weight = lam[:, cols] * d
    else:
        raise ValueError(f"unknown refit {how!r}; expected plain, weighted or none")
    bias = stats.mu_y - weight @ stats.mu_x[cols]
    return weight.contiguous(), bias
