"""Selects the teacher-target mode ``teacher.target_mode`` (spec D3)."""

from typing import Literal

from lightning_modules.components.losses.centering import Centering
from lightning_modules.components.losses.sinkhorn_knopp import SinkhornKnopp

TeacherTargets = Centering | SinkhornKnopp


def build_teacher_targets(
    mode: Literal["centering", "sinkhorn_knopp"],
    num_prototypes: int,
    center_momentum: float = 0.9,
    n_iterations: int = 3,
) -> TeacherTargets:
    """One target module per branch (DINO, iBOT): ``targets(t, τ_t)`` then ``targets.update(t)``."""
    if mode == "centering":
        return Centering(num_prototypes, momentum=center_momentum)
    if mode == "sinkhorn_knopp":
        return SinkhornKnopp(n_iterations=n_iterations)
    raise ValueError(f"teacher target mode must be 'centering' or 'sinkhorn_knopp', got {mode!r}")
