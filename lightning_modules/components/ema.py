"""EMA teacher update with fused ``_foreach`` kernels (spec §5.4)."""

from collections.abc import Iterable, Mapping

import torch
from torch import nn

NamedTensors = nn.Module | Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]


def _as_dict(params: NamedTensors) -> dict[str, torch.Tensor]:
    if isinstance(params, nn.Module):
        return dict(params.named_parameters())
    if isinstance(params, Mapping):
        return dict(params)
    return dict(params)


@torch.no_grad()
def update_momentum_foreach(
    teacher_params: NamedTensors, student_params: NamedTensors, m: float
) -> None:
    """In place ``θ_t ← m·θ_t + (1 − m)·θ_s`` over parameters matched by name.

    Args:
        teacher_params: teacher module, or its named parameters (mapping or (name, tensor) pairs).
        student_params: the student counterpart; its names must equal the teacher's.
        m: teacher momentum in [0, 1]; 1 leaves the teacher unchanged, 0 copies the student.

    Buffers (e.g. centers) are not parameters and are left alone, as in the reference.
    """
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {m}")
    teacher, student = _as_dict(teacher_params), _as_dict(student_params)
    if teacher.keys() != student.keys():
        missing = sorted(teacher.keys() ^ student.keys())[:5]
        raise KeyError(f"teacher and student parameter names differ, e.g. {missing}")
    names = list(teacher)
    t_list = [teacher[n].detach() for n in names]
    s_list = [student[n].detach().to(dtype=teacher[n].dtype) for n in names]
    torch._foreach_mul_(t_list, m)
    torch._foreach_add_(t_list, s_list, alpha=1.0 - m)
