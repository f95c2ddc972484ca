"""update_momentum_foreach: m = 1 keeps the teacher, m = 0 copies the student (§13.11)."""

import copy

import pytest
import torch
from torch import nn

from lightning_modules.components.ema import update_momentum_foreach


def make_pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 3))
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
        p.data.normal_()
    return teacher, student


def test_momentum_one_leaves_teacher_unchanged() -> None:
    teacher, student = make_pair()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    update_momentum_foreach(teacher, student, 1.0)
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k])


def test_momentum_zero_copies_student() -> None:
    teacher, student = make_pair()
    update_momentum_foreach(teacher, student, 0.0)
    for (_, t), (_, s) in zip(teacher.named_parameters(), student.named_parameters(), strict=True):
        assert torch.equal(t, s)


def test_intermediate_momentum_and_named_mappings() -> None:
    teacher, student = make_pair()
    expected = {n: 0.9 * t + 0.1 * student.get_parameter(n) for n, t in teacher.named_parameters()}
    update_momentum_foreach(dict(teacher.named_parameters()), student.named_parameters(), 0.9)
    for n, t in teacher.named_parameters():
        torch.testing.assert_close(t, expected[n])
    assert not any(p.grad is not None for p in student.parameters())


def test_mismatched_names_and_bad_momentum_rejected() -> None:
    teacher, student = make_pair()
    with pytest.raises(KeyError, match="names differ"):
        update_momentum_foreach(teacher, {"0.weight": student[0].weight}, 0.5)
    with pytest.raises(ValueError, match="momentum"):
        update_momentum_foreach(teacher, student, 1.5)


def test_weight_normed_head_deepcopy_and_ema() -> None:
    from lightning_modules.components.heads import DINOHead

    student = DINOHead(8, 16, hidden_dim=12, bottleneck_dim=4)
    teacher = copy.deepcopy(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    update_momentum_foreach(teacher, student, 0.0)
    x = torch.randn(3, 8)
    torch.testing.assert_close(teacher(x), student(x))
