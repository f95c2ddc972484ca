"""Spec §6.3: with w uniform and λ₂ = 0 the Λ-step returns C_in·Q^vec and MSE ≈ 0."""

import torch
from torch import nn

from lightning_modules.components.sparse.entropic_solver import (
    ObjectiveWeights,
    lambda_step,
    objective,
)
from lightning_modules.components.sparse.layer_stats import accumulate_layer_stats, stats_from_rows


def _check_identity(stats, q_vec: torch.Tensor) -> None:
    n = stats.n_channels
    w = torch.full((n,), 1.0 / n, dtype=torch.float64)
    lam = lambda_step(stats, w, 0.0)
    rel = (lam - n * q_vec).norm() / (n * q_vec).norm()
    assert rel < 1e-6
    mse = objective(stats, lam, w, ObjectiveWeights(scale=1.0, lam2=0.0, s_eps=0.0))
    assert abs(mse) < 1e-10 * stats.v_y


def test_lambda_step_reproduces_a_random_linear_layer():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(6, 4 * 9, generator=gen, dtype=torch.float64)
    x = torch.randn(3000, 4 * 9, generator=gen, dtype=torch.float64) + 0.5
    y = x @ q.T + 2.0  # an intercept: removed by centring
    _check_identity(stats_from_rows(x, y, 9), q)


def test_lambda_step_reproduces_a_conv_layer_from_unfolded_patches():
    """Exercises the unfold path: columns must be ordered like weight.reshape(C_out, -1)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1, dilation=1).double().eval()
    images = torch.randn(8, 3, 16, 16, dtype=torch.float64)
    net = nn.Sequential(conv)
    stats, _ = accumulate_layer_stats(
        net, net, "0", lambda: [images], n_images=8, group_size=9, max_rows=10_000, holdout_frac=0
    )
    assert stats.T == 8 * 8 * 8
    _check_identity(stats, conv.weight.detach().reshape(5, -1))
    assert torch.allclose(stats.mu_y - (conv.weight.reshape(5, -1) @ stats.mu_x), conv.bias)
