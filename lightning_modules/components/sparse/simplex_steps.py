"""w-step solvers: min_w  wᵀA·w − 2·aᵀw + s·ε·Σ w log w  over the simplex (spec §2.5 step 2).

A (C_in, C_in) is PSD, so for s = +1 and ε > 0 the problem is strictly convex. ``mirror``
(exponentiated gradient with backtracking) handles both signs; ``newton`` (equality-constrained
Newton with a step that keeps w > 0) is for s = +1. Both return a w whose value is not above
the starting one. A and a already include the layer's normalisation (1/v_y).
"""

import torch

LOG_FLOOR = 1e-12
MAX_HALVINGS = 60


def simplex_value(A: torch.Tensor, a: torch.Tensor, w: torch.Tensor, s_eps: float) -> float:
    """wᵀA·w − 2·aᵀw + s·ε·Σ w log w (log clamped at 1e-12)."""
    ent = (w * torch.log(w.clamp_min(LOG_FLOOR))).sum()
    return float(w @ (A @ w) - 2.0 * (a @ w) + s_eps * ent)


def simplex_grad(A: torch.Tensor, a: torch.Tensor, w: torch.Tensor, s_eps: float) -> torch.Tensor:
    """2A·w − 2a + s·ε·(log w + 1)."""
    return 2.0 * (A @ w) - 2.0 * a + s_eps * (torch.log(w.clamp_min(LOG_FLOOR)) + 1.0)


def _converged(f_old: float, f_new: float, tol: float) -> bool:
    return f_old - f_new <= tol * max(abs(f_old), 1e-300)


def mirror_w_step(
    A: torch.Tensor,
    a: torch.Tensor,
    w: torch.Tensor,
    s_eps: float,
    max_iter: int = 500,
    eta0: float = 1.0,
    tol: float = 1e-8,
) -> torch.Tensor:
    """Exponentiated gradient w ← w∘exp(−η∇)/Z; η halves until the value drops, doubles after.

    Args:
        A: (C_in, C_in) PSD.   a: (C_in,).   w: (C_in,) start on the simplex.
    Returns:
        (C_in,) the new w.
    """
    f, eta = simplex_value(A, a, w, s_eps), eta0
    log_w = torch.log(w)  # −inf for exact zeros: those channels stay at 0
    for _ in range(max_iter):
        grad = simplex_grad(A, a, w, s_eps)
        for _ in range(MAX_HALVINGS):
            cand = torch.softmax(log_w - eta * grad, dim=0)
            f_cand = simplex_value(A, a, cand, s_eps)
            if f_cand < f:
                break
            eta *= 0.5
        else:
            return w  # no descent direction left at machine precision
        done = _converged(f, f_cand, tol)
        w, f, log_w, eta = cand, f_cand, torch.log(cand), 2.0 * eta
        if done:
            break
    return w


def _newton_direction(H0: torch.Tensor, eps: float, w: torch.Tensor, g: torch.Tensor):
    """Δ solving [H 1; 1ᵀ 0]·[Δ; ν] = [−g; 0], H = H0 + ε·diag(1/w), via the W^{1/2} scaling.

    Scaling by W^{1/2} gives W^{1/2}H0W^{1/2} + ε·I, which stays well conditioned as w → 0.
    """
    r = w.sqrt()
    n = w.numel()
    h_scaled = r[:, None] * H0 * r[None, :] + eps * torch.eye(n, dtype=w.dtype, device=w.device)
    rhs = torch.stack([r * g, r], dim=1)  # scaled right-hand sides for g and for 1
    sol = r[:, None] * torch.linalg.solve(h_scaled, rhs)  # columns H⁻¹g, H⁻¹1
    nu = -sol[:, 0].sum() / sol[:, 1].sum()
    return -(sol[:, 0] + nu * sol[:, 1])


def newton_w_step(
    A: torch.Tensor,
    a: torch.Tensor,
    w: torch.Tensor,
    s_eps: float,
    max_iter: int = 500,
    eta0: float = 1.0,
    tol: float = 1e-8,
) -> torch.Tensor:
    """KKT Newton for s·ε > 0 (convex case); backtracking keeps w > 0 and enforces descent."""
    del eta0  # the Newton step has its own unit step length
    if s_eps <= 0:
        raise ValueError("newton_w_step needs s·ε > 0 (entropy_sign=+1, eps_entropy > 0)")
    H0 = 2.0 * A
    w = w.clamp_min(1e-300)
    w = w / w.sum()
    f = simplex_value(A, a, w, s_eps)
    for _ in range(max_iter):
        g = simplex_grad(A, a, w, s_eps)
        delta = _newton_direction(H0, s_eps, w, g)
        decrement = float(-(g @ delta))
        if decrement <= 0 or decrement <= 2 * tol * max(abs(f), 1e-300):
            break
        neg = delta < 0
        t = min(1.0, 0.99 * float((w[neg] / -delta[neg]).min())) if bool(neg.any()) else 1.0
        for _ in range(MAX_HALVINGS):
            cand = (w + t * delta).clamp_min(1e-300)
            cand = cand / cand.sum()
            f_cand = simplex_value(A, a, cand, s_eps)
            if f_cand <= f - 0.25 * t * decrement:
                break
            t *= 0.5
        else:
            break
        w, f = cand, f_cand
    return w
