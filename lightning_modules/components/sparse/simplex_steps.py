"""w-step solvers: min_w  wᵀA·w − 2·aᵀw + s·ε·Σ w log w  over the simplex (spec §2.5 step 2).

A (C_in, C_in) is PSD, so for s = +1 and ε > 0 the problem is strictly convex. ``mirror``
(exponentiated gradient with backtracking) handles both signs; ``newton`` (equality-constrained
Newton with Armijo backtracking) is for s = +1. Both return a w whose value is not above the
starting one. A and a already include the layer's normalisation (1/v_y).

The problem has only C_in ≤ 512 unknowns but needs many tiny steps, so it runs in float64
NumPy on the CPU, where a small operation costs ~1 µs instead of a tensor op's ~10 µs.
"""

import numpy as np
import torch

LOG_FLOOR = 1e-12
MAX_HALVINGS = 60
SHRINK = 1e-3  # Newton: largest one-step shrink factor of a channel


def simplex_value(A: np.ndarray, a: np.ndarray, w: np.ndarray, s_eps: float) -> float:
    """wᵀA·w − 2·aᵀw + s·ε·Σ w log w (log clamped at 1e-12)."""
    ent = float(w @ np.log(np.maximum(w, LOG_FLOOR)))
    return float(w @ (A @ w) - 2.0 * (a @ w) + s_eps * ent)


def simplex_grad(A: np.ndarray, a: np.ndarray, w: np.ndarray, s_eps: float) -> np.ndarray:
    """2A·w − 2a + s·ε·(log w + 1)."""
    return 2.0 * (A @ w) - 2.0 * a + s_eps * (np.log(np.maximum(w, LOG_FLOOR)) + 1.0)


def _to_numpy(*tensors: torch.Tensor) -> list[np.ndarray]:
    return [t.detach().to("cpu", torch.float64).numpy() for t in tensors]


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
        (C_in,) the new w (dtype and device of the input w).
    """
    A_, a_, w_ = _to_numpy(A, a, w)
    f, eta = simplex_value(A_, a_, w_, s_eps), eta0
    with np.errstate(divide="ignore"):
        log_w = np.log(w_)  # −inf for exact zeros: those channels stay at 0
    for _ in range(max_iter):
        grad = simplex_grad(A_, a_, w_, s_eps)
        for _ in range(MAX_HALVINGS):
            z = log_w - eta * grad
            cand = np.exp(z - z.max())
            cand /= cand.sum()
            f_cand = simplex_value(A_, a_, cand, s_eps)
            if f_cand < f:
                break
            eta *= 0.5
        else:
            break  # no descent left at machine precision
        done = _converged(f, f_cand, tol)
        with np.errstate(divide="ignore"):
            w_, f, log_w, eta = cand, f_cand, np.log(cand), 2.0 * eta
        if done:
            break
    return torch.as_tensor(w_).to(w)


def _newton_direction(H0: np.ndarray, eps: float, w: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Δ solving [H 1; 1ᵀ 0]·[Δ; ν] = [−g; 0], H = H0 + ε·diag(1/w), via the W^{1/2} scaling.

    Scaling by W^{1/2} gives W^{1/2}H0W^{1/2} + ε·I, which stays well conditioned as w → 0.
    """
    r = np.sqrt(w)
    h_scaled = r[:, None] * H0 * r[None, :] + eps * np.eye(w.size)
    sol = r[:, None] * np.linalg.solve(h_scaled, np.stack([r * g, r], axis=1))  # H⁻¹g, H⁻¹1
    nu = -sol[:, 0].sum() / sol[:, 1].sum()
    return -(sol[:, 0] + nu * sol[:, 1])


def _damped(w: np.ndarray, delta: np.ndarray, t: float) -> np.ndarray:
    """w + t·Δ where no coordinate shrinks by more than SHRINK per step, renormalised.

    A plain fraction-to-boundary rule would cap t for *all* coordinates whenever one channel
    heads to 0 (its optimum can be e^(−1/ε)-small), stalling the step; shrinking such a channel
    geometrically instead lets the others take full Newton steps.
    """
    cand = np.maximum(w + t * delta, SHRINK * w)
    return cand / cand.sum()


def newton_w_step(
    A: torch.Tensor,
    a: torch.Tensor,
    w: torch.Tensor,
    s_eps: float,
    max_iter: int = 500,
    eta0: float = 1.0,
    tol: float = 1e-8,
) -> torch.Tensor:
    """KKT Newton for s·ε > 0 (convex case) with Armijo backtracking.

    Channels already below the log floor (1e-12) are frozen: there the clamped entropy is linear
    and the channel is pruned by any keep rule.
    """
    del eta0  # the Newton step has its own unit step length
    if s_eps <= 0:
        raise ValueError("newton_w_step needs s·ε > 0 (entropy_sign=+1, eps_entropy > 0)")
    A_, a_, w_ = _to_numpy(A, a, w)
    f = simplex_value(A_, a_, w_, s_eps)
    for _ in range(max_iter):
        free = w_ > LOG_FLOOR
        if free.sum() < 2:
            break
        g = simplex_grad(A_, a_, w_, s_eps)
        delta = np.zeros_like(w_)
        delta[free] = _newton_direction(2.0 * A_[np.ix_(free, free)], s_eps, w_[free], g[free])
        decrement = float(-(g @ delta))
        if decrement <= tol * max(abs(f), 1e-300):
            break
        t = 1.0
        for _ in range(MAX_HALVINGS):
            cand = _damped(w_, delta, t)
            f_cand = simplex_value(A_, a_, cand, s_eps)
            if f_cand <= f - 0.25 * t * decrement:
                break
            t *= 0.5
        else:
            break
        w_, f = cand, f_cand
    return torch.as_tensor(w_).to(w)
