"""Alternating solver of the entropic channel-selection regression (spec §2.3-2.6).

Minimises, on the centred statistics of one layer (D = C_in·g columns, C_out outputs),

    J(Λ, w) = scale·( ‖Y − X·D(w)·Λᵀ‖²_F / T + λ₂·‖Λ‖²_F ) + s·ε_E·Σ_c w_c·log w_c,   w ∈ Δ^{C_in}

with scale = 1/v_y and λ₂ = ρ·v_x/C_in² (``normalise``) or scale = 1, λ₂ = ρ (raw). The Λ-step is
a closed-form ridge (one Cholesky for all outputs); the w-step minimises the channel-level
quadratic + entropy on the simplex and is accepted only if J decreases.

A *group* of consumers that read the same channels (ResNet stage channels, ``resnet_stage=joint``)
shares one w: J sums the fit terms of its m consumers, each with its own Λ_j and scale 1/(m·v_y,j)
(the mean relative error, so m = 1 is exactly the single-layer J), plus one entropy term.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from lightning_modules.components.sparse.keep_rules import select_channels
from lightning_modules.components.sparse.layer_stats import LayerStats
from lightning_modules.components.sparse.prune_config import PruneConfig
from lightning_modules.components.sparse.refit import refit_weights
from lightning_modules.components.sparse.ridge import ridge_solve
from lightning_modules.components.sparse.simplex_steps import mirror_w_step, newton_w_step

LOG_FLOOR = 1e-12


@dataclass(frozen=True)
class ObjectiveWeights:
    """scale (1/v_y or 1), λ₂ and the signed entropy weight s·ε_E of one layer's J."""

    scale: float
    lam2: float
    s_eps: float


@dataclass
class SolverResult:
    """Outcome of ``solve_layer``.

    Attributes:
        w: (C_in,) selection probabilities.   lam: (C_out, D) Λ of the last Λ-step.
        kept: (|K|,) kept channel indices, sorted.
        weight: (C_out, |K|·g) refit consumer weights B'.   bias: (C_out,) intercept b'.
        history: J after every Λ-step and w-step of the chosen restart.
        iterations: outer iterations of the chosen restart.   objective: its final J.
        heldout_objective: J on the held-out rows (None without held-out rows).   init: its name.
    """

    w: torch.Tensor
    lam: torch.Tensor
    kept: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    history: list[float] = field(default_factory=list)
    iterations: int = 0
    objective: float = float("nan")
    heldout_objective: float | None = None
    init: str = "uniform"


def objective_weights(
    stats: LayerStats, cfg: PruneConfig, n_consumers: int = 1
) -> ObjectiveWeights:
    """The constants of J for one layer (normalised per spec §2.3, or raw), one of a group of m."""
    s_eps = cfg.entropy_sign * cfg.eps_entropy
    if not cfg.normalise:
        return ObjectiveWeights(1.0, cfg.rho, s_eps)
    v_y = stats.v_y if stats.v_y > 0 else 1.0
    lam2 = cfg.rho * stats.v_x / stats.n_channels**2
    return ObjectiveWeights(1.0 / (n_consumers * v_y), lam2, s_eps)


def entropy_term(w: torch.Tensor) -> torch.Tensor:
    """Σ_c w_c·log w_c with w clamped at 1e-12 inside the log."""
    return (w * torch.log(w.clamp_min(LOG_FLOOR))).sum()


def lambda_step(stats: LayerStats, w: torch.Tensor, lam2: float) -> torch.Tensor:
    """Λ = argmin_Λ J(·, w): Λᵀ = (D·G·D + λ₂·I)⁻¹·D·C_xy, returned as (C_out, D)."""
    d = w.repeat_interleave(stats.group_size)
    lam_t = ridge_solve(d[:, None] * stats.G * d[None, :], d[:, None] * stats.C_xy, lam2)
    return lam_t.T


def fit_term(stats: LayerStats, lam: torch.Tensor, w: torch.Tensor, ow: ObjectiveWeights) -> float:
    """scale·(MSE + λ₂‖Λ‖²) with MSE = v_y − 2·tr(B·C_xy) + tr(B·G·Bᵀ), B = Λ·D(w)."""
    b = lam * w.repeat_interleave(stats.group_size)
    mse = stats.v_y - 2.0 * (b * stats.C_xy.T).sum() + ((b @ stats.G) * b).sum()
    return float(ow.scale * (mse + ow.lam2 * (lam * lam).sum()))


def objective(stats: LayerStats, lam: torch.Tensor, w: torch.Tensor, ow: ObjectiveWeights) -> float:
    """J(Λ, w) of one layer from the statistics alone."""
    return fit_term(stats, lam, w, ow) + float(ow.s_eps * entropy_term(w))


def group_objective(
    group: Sequence[LayerStats],
    lams: Sequence[torch.Tensor],
    w: torch.Tensor,
    ows: Sequence[ObjectiveWeights],
) -> float:
    """J of a consumer group: Σ_j fit_j(Λ_j, w) + s·ε_E·Σ_c w_c·log w_c (one entropy term)."""
    fits = sum(fit_term(s, lam, w, ow) for s, lam, ow in zip(group, lams, ows, strict=True))
    return fits + float(ows[0].s_eps * entropy_term(w))


def channel_quadratic(stats: LayerStats, lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A_ch (C_in, C_in) and a_ch (C_in,) with MSE(w) = wᵀA_ch·w − 2·a_chᵀw + v_y for fixed Λ.

    A = G ∘ (ΛᵀΛ) and a_j = Σ_o C_xy[j, o]·Λ[o, j], summed over each channel's g columns.
    """
    n, g = stats.n_channels, stats.group_size
    a_full = stats.G * (lam.T @ lam)
    a_ch = a_full.reshape(n, g, n, g).sum(dim=(1, 3))
    b_ch = (stats.C_xy * lam.T).sum(1).reshape(n, g).sum(1)
    return 0.5 * (a_ch + a_ch.T), b_ch


def _group_weights(group: Sequence[LayerStats], cfg: PruneConfig) -> list[ObjectiveWeights]:
    return [objective_weights(s, cfg, len(group)) for s in group]


def alternate_group(
    group: Sequence[LayerStats], w0: torch.Tensor, cfg: PruneConfig
) -> tuple[list[torch.Tensor], torch.Tensor, list[float], int]:
    """Alternating Λ- and w-steps from w0 until the relative decrease of J < tol or max_iter.

    Each Λ_j is a ridge solve of its own consumer; the w-step minimises the summed channel
    quadratics Σ_j scale_j·(wᵀA_j·w − 2·a_jᵀw) + entropy (exact: MSE_j is quadratic in w).

    Returns:
        ([Λ_j (C_out,j, D_j)], w (C_in,), history of J after every step, outer iterations).
    """
    ows = _group_weights(group, cfg)
    step = newton_w_step if cfg.w_solver == "newton" else mirror_w_step
    const = sum(ow.scale * s.v_y for s, ow in zip(group, ows, strict=True))
    w, history, j_prev, it = w0.clone(), [], float("inf"), 0
    for it in range(1, cfg.max_iter + 1):  # noqa: B007 - `it` is returned
        lams = [lambda_step(s, w, ow.lam2) for s, ow in zip(group, ows, strict=True)]
        quad, lin, penalty = 0.0, 0.0, const
        for s, lam, ow in zip(group, lams, ows, strict=True):
            q, a = channel_quadratic(s, lam)
            quad, lin = quad + ow.scale * q, lin + ow.scale * a
            penalty += ow.scale * ow.lam2 * float((lam * lam).sum())

        def j_of(w_: torch.Tensor, quad=quad, lin=lin, penalty=penalty) -> float:
            # exact J for fixed Λ: Σ_j scale_j·(wᵀA_j·w − 2·a_jᵀw + v_y,j + λ₂,j‖Λ_j‖²) + entropy
            return float(
                w_ @ (quad @ w_) - 2.0 * (lin @ w_) + penalty + ows[0].s_eps * entropy_term(w_)
            )

        j_lam = j_of(w)
        history.append(j_lam)
        w_new = step(quad, lin, w, ows[0].s_eps, cfg.inner_max_iter, cfg.eta0, cfg.tol)
        j_w = j_of(w_new)
        if j_w < j_lam:  # accept only if J decreases
            w = w_new
        history.append(min(j_w, j_lam))
        if j_prev - history[-1] < cfg.tol * abs(j_prev):
            break
        j_prev = history[-1]
    # Λ consistent with the final w; J can only drop
    lams = [lambda_step(s, w, ow.lam2) for s, ow in zip(group, ows, strict=True)]
    history.append(group_objective(group, lams, w, ows))
    return lams, w, history, it


def alternate(
    stats: LayerStats, w0: torch.Tensor, cfg: PruneConfig
) -> tuple[torch.Tensor, torch.Tensor, list[float], int]:
    """``alternate_group`` for one layer: (Λ (C_out, D), w (C_in,), history, iterations)."""
    lams, w, history, it = alternate_group([stats], w0, cfg)
    return lams[0], w, history, it


def initial_ws(
    stats: LayerStats | Sequence[LayerStats], cfg: PruneConfig
) -> list[tuple[str, torch.Tensor]]:
    """Restart points in order: cfg.init, the other deterministic init, then Dirichlet(1) draws.

    For a consumer group the correlation init takes each channel's best score over consumers.
    """
    group = [stats] if isinstance(stats, LayerStats) else list(stats)
    stats = group[0]
    n = stats.n_channels
    uniform = torch.full((n,), 1.0 / n, dtype=stats.G.dtype, device=stats.G.device)
    score = torch.stack([correlation_scores(s) for s in group]).amax(0)
    corr = score / score.sum() if float(score.sum()) > 0 else uniform
    named = [("uniform", uniform), ("corr", corr)]
    if cfg.init == "corr":
        named.reverse()
    gen = torch.Generator().manual_seed(cfg.seed)
    while len(named) < cfg.restarts:
        e = -torch.log(torch.rand(n, generator=gen, dtype=stats.G.dtype).clamp_min(1e-300))
        named.append((f"dirichlet{len(named) - 1}", (e / e.sum()).to(stats.G.device)))
    return named[: cfg.restarts]


def correlation_scores(stats: LayerStats) -> torch.Tensor:
    """SPARTAn's init score per channel: max over its columns and outputs of |corr(x_j, y_o)|."""
    sd_x = torch.diagonal(stats.G).clamp_min(0).sqrt()
    sd_y = stats.y_var.sqrt()
    denom = sd_x[:, None] * sd_y[None, :]
    corr = torch.where(denom > 0, stats.C_xy.abs() / denom.clamp_min(1e-300), 0.0)
    per_channel = corr.reshape(stats.n_channels, -1).amax(1)
    return per_channel + 1e-3 * per_channel.max()  # no channel starts at exactly 0


@dataclass
class GroupResult:
    """Outcome of ``solve_group``: ``SolverResult`` with one Λ, weight and bias per consumer."""

    w: torch.Tensor
    lams: list[torch.Tensor]
    kept: torch.Tensor
    weights: list[torch.Tensor]
    biases: list[torch.Tensor]
    history: list[float]
    iterations: int
    objective: float
    heldout_objective: float | None
    init: str


def solve_group(
    group: Sequence[LayerStats],
    cfg: PruneConfig,
    heldout: Sequence[LayerStats | None] | None = None,
    n_keep: int | None = None,
) -> GroupResult:
    """Run all restarts on consumers sharing one w, keep the lowest held-out J, select, refit.

    Args:
        group: fit statistics of each consumer (same C_in).   heldout: their held-out statistics
            (the fit J decides when any is missing).   n_keep: explicit kept count.
    """
    if cfg.boxes != 1:
        raise ValueError(f"boxes={cfg.boxes}: only one box (K = 1) is implemented")
    if len({s.n_channels for s in group}) != 1:
        raise ValueError(f"consumers of one group read different channel counts: "
                         f"{[s.n_channels for s in group]}")  # fmt: skip
    ows = _group_weights(group, cfg)
    use_held = heldout is not None and all(h is not None for h in heldout)
    runs = []
    for name, w0 in initial_ws(group, cfg):
        lams, w, history, iters = alternate_group(group, w0, cfg)
        held = group_objective(heldout, lams, w, ows) if use_held else None
        runs.append(
            (held if held is not None else history[-1], name, lams, w, history, iters, held)
        )
    _, name, lams, w, history, iters, held = min(runs, key=lambda run: run[0])
    kept = select_channels(w, cfg, n_keep)
    fits = [
        refit_weights(s, kept, cfg.refit, lam, w, ow.lam2)
        for s, lam, ow in zip(group, lams, ows, strict=True)
    ]
    weights, biases = [f[0] for f in fits], [f[1] for f in fits]
    return GroupResult(w, lams, kept, weights, biases, history, iters, history[-1], held, name)


def solve_layer(
    stats: LayerStats,
    cfg: PruneConfig,
    heldout: LayerStats | None = None,
    n_keep: int | None = None,
) -> SolverResult:
    """``solve_group`` for one layer (restarts, held-out choice, selection, refit)."""
    res = solve_group([stats], cfg, [heldout], n_keep)
    return SolverResult(
        res.w, res.lams[0], res.kept, res.weights[0], res.biases[0], res.history,
        res.iterations, res.objective, res.heldout_objective, res.init,
    )  # fmt: skip
