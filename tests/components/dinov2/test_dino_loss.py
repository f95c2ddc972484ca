"""DINOLoss against an independent per-pair formula (spec §4.2, §13.4)."""

import math

import pytest
import torch

from lightning_modules.components.losses import DINOLoss


def ce(p: torch.Tensor, s: torch.Tensor, temp: float) -> torch.Tensor:
    """Batch-mean cross-entropy of targets p (B, K) and student logits s (B, K)."""
    return -(p * torch.log_softmax(s / temp, dim=-1)).sum(-1).mean()


def hand_formula(s_global, s_local, t_probs, n_local, temp=0.1):
    """Loop over every (teacher global g, student crop) pair, cross-view only."""
    b = t_probs.shape[0] // 2
    teacher = [t_probs[:b], t_probs[b:]]
    student_g = [s_global[:b], s_global[b:]]
    student_l = [s_local[i * b : (i + 1) * b] for i in range(n_local)]
    n_terms = 2 * n_local + 2
    local = sum(ce(teacher[g], student_l[i], temp) for i in range(n_local) for g in range(2))
    glob = sum(ce(teacher[g], student_g[s], temp) for g in range(2) for s in range(2) if g != s)
    return local / n_terms, glob / n_terms


@pytest.mark.parametrize("n_local", [8, 3, 0])
def test_matches_hand_formula(n_local: int) -> None:
    torch.manual_seed(0)
    b, k = 5, 17
    s_global = torch.randn(2 * b, k)
    s_local = torch.randn(n_local * b, k)
    t_probs = torch.softmax(torch.randn(2 * b, k) / 0.05, dim=-1)
    out = DINOLoss(student_temp=0.1)(s_global, s_local if n_local else None, t_probs)
    local, glob = hand_formula(s_global, s_local, t_probs, n_local)
    torch.testing.assert_close(out["local"], torch.as_tensor(local, dtype=torch.float32))
    torch.testing.assert_close(out["global"], glob)


def test_eighteen_terms_and_swap() -> None:
    """With 8 locals the global term is (1/18)(CE(t2→s1) + CE(t1→s2)), not the same-view pair."""
    torch.manual_seed(1)
    b, k = 4, 11
    s_global, t_probs = torch.randn(2 * b, k), torch.softmax(torch.randn(2 * b, k), dim=-1)
    out = DINOLoss()(s_global, torch.randn(8 * b, k), t_probs)
    cross = ce(t_probs[b:], s_global[:b], 0.1) + ce(t_probs[:b], s_global[b:], 0.1)
    same = ce(t_probs[:b], s_global[:b], 0.1) + ce(t_probs[b:], s_global[b:], 0.1)
    torch.testing.assert_close(out["global"], cross / 18)
    assert not torch.allclose(out["global"], same / 18)


def test_uniform_logits_give_log_k() -> None:
    b, k = 3, 4096
    uniform = torch.full((2 * b, k), 1.0 / k)
    out = DINOLoss()(torch.zeros(2 * b, k), torch.zeros(8 * b, k), uniform)
    total = out["local"] + out["global"]
    assert total.item() == pytest.approx(math.log(k), rel=1e-5)  # fp32 sums
    assert math.log(k) == pytest.approx(8.3178, abs=1e-4)


def test_runs_in_fp32_for_half_inputs() -> None:
    b, k = 2, 9
    out = DINOLoss()(
        torch.randn(2 * b, k).bfloat16(),
        torch.randn(2 * b, k).bfloat16(),
        torch.softmax(torch.randn(2 * b, k), -1),
    )
    assert out["local"].dtype == torch.float32 and out["global"].dtype == torch.float32


def test_autocast_does_not_lower_precision() -> None:
    torch.manual_seed(2)
    b, k = 4, 64
    args = (torch.randn(2 * b, k), torch.randn(8 * b, k), torch.softmax(torch.randn(2 * b, k), -1))
    plain = DINOLoss()(*args)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = DINOLoss()(*args)
    for key in ("local", "global"):
        assert mixed[key].dtype == torch.float32
        torch.testing.assert_close(mixed[key], plain[key], rtol=1e-6, atol=1e-6)
