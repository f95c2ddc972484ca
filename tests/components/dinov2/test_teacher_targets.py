"""Sinkhorn-Knopp and centering in a single process (spec §4.3, §13.5)."""

import pytest
import torch
import torch.distributed as dist

from lightning_modules.components.losses import (
    Centering,
    SinkhornKnopp,
    build_teacher_targets,
    sinkhorn_knopp,
)


def reference_sk(t: torch.Tensor, temp: float, n_iter: int = 3) -> torch.Tensor:
    """The spec's pseudocode, single process, without max subtraction."""
    q = torch.exp(t.double() / temp).T
    k, n = q.shape
    q /= q.sum()
    for _ in range(n_iter):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= n
    return (q * n).T


def test_sk_runs_without_process_group_and_rows_sum_to_one() -> None:
    assert not dist.is_initialized()
    torch.manual_seed(0)
    b, k, temp = 64, 16, 0.07
    t = torch.rand(b, k) * 2 - 1  # weight-normed head logits lie in [−1, 1] at init
    targets = sinkhorn_knopp(t, teacher_temp=temp)
    assert targets.dtype == torch.float32 and targets.shape == (b, k)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(b))

    # Column marginals approach the uniform B/K: 3 iterations move most of the way from the
    # softmax, and more iterations converge.
    def deviation(q: torch.Tensor) -> float:
        return (q.sum(dim=0) / (b / k) - 1).abs().max().item()

    assert deviation(targets) < 0.5 * deviation(torch.softmax(t / temp, dim=-1))
    converged = sinkhorn_knopp(t, teacher_temp=temp, n_iterations=30)
    torch.testing.assert_close(converged.sum(dim=0), torch.full((k,), b / k), rtol=0.01, atol=0)
    torch.testing.assert_close(converged.sum(dim=1), torch.ones(b))


def test_sk_max_subtraction_leaves_output_unchanged() -> None:
    torch.manual_seed(1)
    t = torch.randn(32, 10)
    with_max = sinkhorn_knopp(t, 0.04, subtract_max=True)
    without = sinkhorn_knopp(t, 0.04, subtract_max=False)
    torch.testing.assert_close(with_max, without, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(with_max.double(), reference_sk(t, 0.04), rtol=1e-5, atol=1e-6)


def test_sk_max_subtraction_survives_large_logits() -> None:
    t = torch.randn(16, 8) * 50.0  # exp(t/0.04) overflows without the max subtraction
    assert not torch.isfinite(sinkhorn_knopp(t, 0.04, subtract_max=False)).all()
    targets = sinkhorn_knopp(t, 0.04)
    assert torch.isfinite(targets).all()
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(16))


def test_sk_half_precision_input_gives_fp32_and_empty_input() -> None:
    assert sinkhorn_knopp(torch.randn(4, 6).bfloat16(), 0.07).dtype == torch.float32
    assert sinkhorn_knopp(torch.zeros(0, 6), 0.07).shape == (0, 6)


def test_centering_order_and_update() -> None:
    k, temp = 6, 0.05
    centering = Centering(k, momentum=0.9)
    assert "center" in dict(centering.named_buffers())
    t0, t1 = torch.randn(8, k), torch.randn(8, k)
    # step 0 uses c = 0
    torch.testing.assert_close(centering(t0, temp), torch.softmax(t0 / temp, dim=-1))
    centering.update(t0)
    c1 = 0.1 * t0.mean(dim=0, keepdim=True)
    torch.testing.assert_close(centering.center, c1)
    # step 1 uses the center updated through step 0
    torch.testing.assert_close(centering(t1, temp), torch.softmax((t1 - c1) / temp, dim=-1))
    centering.update(t1)
    torch.testing.assert_close(centering.center, 0.9 * c1 + 0.1 * t1.mean(0, keepdim=True))
    centering.update(torch.zeros(0, k))  # no rows anywhere: center unchanged, no NaN
    assert torch.isfinite(centering.center).all()


def test_build_teacher_targets() -> None:
    assert isinstance(build_teacher_targets("centering", 5), Centering)
    assert isinstance(build_teacher_targets("sinkhorn_knopp", 5), SinkhornKnopp)
    with pytest.raises(ValueError, match="teacher target mode"):
        build_teacher_targets("softmax", 5)
