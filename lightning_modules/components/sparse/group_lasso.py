"""Group-LASSO channel selector, the project's He et al. (2017)-style baseline (spec §7.4).

Minimises, on the same centred statistics as the entropic solver (Θ = Λᵀ, D × C_out),

    F(Θ) = ‖Y − X·Θ‖²_F / (T·v_y) + α·κ·Σ_c ‖Θ_c‖_F,     κ = √(v_x / v_y) / C_in,

where Θ_c is the g × C_out block of channel c. κ makes α dimensionless (invariant to rescaling
X or Y) and comparable across layers. Solved by FISTA with adaptive restart: gradient step on
the smooth part, then block soft-thresholding. ``bisect_alpha`` finds α for a given kept count.
"""

from dataclasses import dataclass

import torch

from lightning_modules.components.sparse.layer_stats import LayerStats


@dataclass
class GroupLassoResult:
    """theta: (D, C_out) Λᵀ; norms: (C_in,) block norms ‖Θ_c‖_F; kept: (|K|,) sorted indices."""

    theta: torch.Tensor
    norms: torch.Tensor
    kept: torch.Tensor
    alpha: float
    iterations: int


def _kappa(stats: LayerStats) -> float:
    v_y = stats.v_y if stats.v_y > 0 else 1.0
    return (stats.v_x / v_y) ** 0.5 / stats.n_channels


def _block_norms(theta: torch.Tensor, n_channels: int) -> torch.Tensor:
    return theta.reshape(n_channels, -1).norm(dim=1)


def _prox(theta: torch.Tensor, n_channels: int, thresh: float) -> torch.Tensor:
    """Block soft-threshold: Θ_c ← max(0, 1 − thresh/‖Θ_c‖)·Θ_c."""
    blocks = theta.reshape(n_channels, -1)
    norms = blocks.norm(dim=1, keepdim=True)
    shrink = (1.0 - thresh / norms.clamp_min(1e-300)).clamp_min(0.0)
    return (blocks * shrink).reshape_as(theta)


def alpha_max(stats: LayerStats) -> float:
    """Smallest α for which Θ = 0 is optimal: max_c ‖2·C_xy,c‖_F / (v_y·κ)."""
    v_y = stats.v_y if stats.v_y > 0 else 1.0
    grad0 = _block_norms(2.0 * stats.C_xy / v_y, stats.n_channels)
    return float(grad0.max()) / _kappa(stats)


def group_lasso(
    stats: LayerStats,
    alpha: float,
    theta0: torch.Tensor | None = None,
    max_iter: int = 3000,
    tol: float = 1e-9,
) -> GroupLassoResult:
    """Proximal-gradient (FISTA) solution of F for one α; kept = channels with Θ_c ≠ 0."""
    n = stats.n_channels
    v_y = stats.v_y if stats.v_y > 0 else 1.0
    lipschitz = 2.0 * float(torch.linalg.eigvalsh(stats.G)[-1]) / v_y
    step = 1.0 / max(lipschitz, 1e-300)
    thresh = step * alpha * _kappa(stats)
    theta = torch.zeros_like(stats.C_xy) if theta0 is None else theta0.clone()
    momentum, t_k, it = theta.clone(), 1.0, 0
    for it in range(1, max_iter + 1):  # noqa: B007 - `it` is returned
        grad = 2.0 * (stats.G @ momentum - stats.C_xy) / v_y
        new = _prox(momentum - step * grad, n, thresh)
        change = float((new - theta).norm())
        t_next = 0.5 * (1.0 + (1.0 + 4.0 * t_k * t_k) ** 0.5)
        # Adaptive restart (O'Donoghue & Candès): drop momentum when it points uphill.
        if float(((momentum - new) * (new - theta)).sum()) > 0:
            t_next = 1.0
        momentum = new + ((t_k - 1.0) / t_next) * (new - theta)
        theta, t_k = new, t_next
        if change <= tol * max(float(theta.norm()), 1e-300):
            break
    norms = _block_norms(theta, n)
    kept = torch.nonzero(norms > 0).flatten()
    return GroupLassoResult(theta, norms, kept, alpha, it)


def bisect_alpha(
    stats: LayerStats, n_keep: int, steps: int = 40, max_iter: int = 2000, tol: float = 1e-6
) -> GroupLassoResult:
    """α (bisected on a log scale in [1e-6, 1]·α_max) whose solution keeps ``n_keep`` channels.

    Each solve is warm-started from the previous one; the search starts in the middle, because
    tiny α (nearly plain least squares) converges slowest. If no α hits the count exactly, the
    sparsest solution keeping more channels is cut to its ``n_keep`` largest blocks (norms
    weighted by the columns' standard deviations).
    """
    if not 1 <= n_keep <= stats.n_channels:
        raise ValueError(f"n_keep must lie in [1, {stats.n_channels}], got {n_keep}")
    hi = alpha_max(stats)
    lo = hi * 1e-6
    best: GroupLassoResult | None = None
    theta = None
    for _ in range(steps):
        mid = (lo * hi) ** 0.5
        res = group_lasso(stats, mid, theta, max_iter, tol)
        theta = res.theta
        if res.kept.numel() == n_keep:
            return res
        if res.kept.numel() > n_keep:
            lo, best = mid, res
        else:
            hi = mid
    if best is None:
        best = group_lasso(stats, lo, theta, max_iter, tol)
    sd = torch.diagonal(stats.G).clamp_min(0).sqrt()
    score = _block_norms(best.theta * sd[:, None], stats.n_channels)
    kept = torch.sort(torch.argsort(score, descending=True, stable=True)[:n_keep]).values
    return GroupLassoResult(best.theta, best.norms, kept, best.alpha, best.iterations)
