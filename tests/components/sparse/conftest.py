"""Fixtures of the sparsification tests: one CPU thread, and the synthetic layer of spec §6.1."""

import pytest
import torch

from lightning_modules.components.sparse.layer_stats import LayerStats, stats_from_rows

INFORMATIVE = (1, 4, 6)  # the channels the synthetic targets depend on


def _synthetic_rows(
    seed: int = 0, rows: int = 4000, n_channels: int = 8, group: int = 9, n_out: int = 5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Spec §6.1: mildly correlated Gaussian X (rows, 8·9), Y = X·Bᵀ + 0.01·noise, B on {1, 4, 6}.

    Returns:
        x (rows, D), y (rows, n_out), b (n_out, D).
    """
    gen = torch.Generator().manual_seed(seed)
    d = n_channels * group
    mix = torch.eye(d, dtype=torch.float64)
    mix += 0.3 * torch.randn(d, d, generator=gen, dtype=torch.float64) / d**0.5
    x = torch.randn(rows, d, generator=gen, dtype=torch.float64) @ mix
    b = torch.zeros(n_out, n_channels, group, dtype=torch.float64)
    for c in INFORMATIVE:
        b[:, c] = torch.randn(n_out, group, generator=gen, dtype=torch.float64)
    b = b.reshape(n_out, d)
    y = x @ b.T + 0.01 * torch.randn(rows, n_out, generator=gen, dtype=torch.float64)
    return x, y, b


@pytest.fixture(scope="session")
def informative() -> list[int]:
    return list(INFORMATIVE)


@pytest.fixture(scope="session")
def synthetic_rows() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (4000, 72), y (4000, 5) and the true weights b (5, 72) of the §6.1 layer."""
    return _synthetic_rows()


@pytest.fixture(scope="session")
def synthetic_stats(synthetic_rows) -> tuple[LayerStats, LayerStats]:
    """(fit stats of 90 % of the rows, held-out stats of the other 10 %) of the §6.1 layer."""
    x, y, _ = synthetic_rows
    cut = int(0.9 * x.shape[0])
    return stats_from_rows(x[:cut], y[:cut], 9), stats_from_rows(x[cut:], y[cut:], 9)
