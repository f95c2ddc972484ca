"""Spec §6.2: J never increases across any Λ-step or w-step, for both entropy signs."""

import pytest
import torch

from lightning_modules.components.sparse.entropic_solver import (
    alternate,
    channel_quadratic,
    initial_ws,
    objective,
    objective_weights,
)
from lightning_modules.components.sparse.prune_config import PruneConfig

REL_TOL = 1e-12


@pytest.mark.parametrize(
    ("sign", "solver", "normalise"),
    [(1, "mirror", True), (1, "newton", True), (-1, "mirror", True), (1, "mirror", False)],
)
def test_objective_never_increases(synthetic_stats, sign, solver, normalise):
    stats, _ = synthetic_stats
    cfg = PruneConfig(
        entropy_sign=sign, eps_entropy=1e-2, rho=0.3, w_solver=solver, normalise=normalise
    )
    for name, w0 in initial_ws(stats, cfg):
        lam, w, history, _ = alternate(stats, w0, cfg)
        hist = torch.tensor(history, dtype=torch.float64)
        rises = hist[1:] - hist[:-1]
        assert bool((rises <= REL_TOL * hist[:-1].abs()).all()), (name, rises.max())
        # The recorded value is the true J of the returned (Λ, w).
        direct = objective(stats, lam, w, objective_weights(stats, cfg))
        assert abs(direct - history[-1]) <= 1e-10 * abs(direct)
        assert abs(float(w.sum()) - 1.0) < 1e-12 and bool((w >= 0).all())


def test_channel_quadratic_matches_direct_objective(synthetic_stats):
    """The w-step's channel-level quadratic is the same J as the column-level formula."""
    stats, _ = synthetic_stats
    gen = torch.Generator().manual_seed(1)
    lam = torch.randn(5, 72, generator=gen, dtype=torch.float64)
    w = torch.rand(8, generator=gen, dtype=torch.float64)
    w /= w.sum()
    ow = objective_weights(stats, PruneConfig(entropy_sign=-1, eps_entropy=0.1))
    quad, lin = channel_quadratic(stats, lam)
    mse = w @ quad @ w - 2 * lin @ w + stats.v_y
    ent = (w * w.log()).sum()
    via_quad = ow.scale * (mse + ow.lam2 * (lam * lam).sum()) + ow.s_eps * ent
    assert abs(float(via_quad) - objective(stats, lam, w, ow)) < 1e-10
