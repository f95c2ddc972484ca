"""Ridge least squares through one Cholesky factorisation shared by all outputs (spec §2.5)."""

import torch


def ridge_solve(M: torch.Tensor, rhs: torch.Tensor, ridge: float = 0.0) -> torch.Tensor:
    """Solve (M + ridge·I)·X = rhs for a symmetric PSD M.

    One factorisation serves every right-hand side column. If M + ridge·I is numerically
    singular (e.g. ridge = 0 and fewer rows than columns), a jitter growing from 1e-14·tr(M)/n
    is added until the factorisation succeeds.

    Args:
        M: (n, n) symmetric positive semi-definite.
        rhs: (n, m) right-hand sides.

    Returns:
        (n, m) solution.
    """
    n = M.shape[0]
    eye = torch.eye(n, dtype=M.dtype, device=M.device)
    scale = float(torch.diagonal(M).abs().mean()) if n else 1.0
    scale = scale if scale > 0 else 1.0
    jitter = 0.0
    for _ in range(20):
        chol, info = torch.linalg.cholesky_ex(M + (ridge + jitter) * eye)
        if int(info) == 0:
            return torch.cholesky_solve(rhs, chol)
        jitter = max(10.0 * jitter, 1e-14 * scale)
    raise torch.linalg.LinAlgError("ridge_solve: matrix is not positive definite even with jitter")
