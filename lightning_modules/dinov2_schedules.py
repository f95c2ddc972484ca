"""DINOv2 optimisation settings and their per-step schedules (spec §5.1-5.2, decision D4).

Every value is a pure function of the global step: ``DINOv2Schedules.apply(optimizer, step)``
writes lr and weight decay into the parameter groups before each optimizer step, so a run
resumed at step ``s`` sees exactly the values of an uninterrupted run. Lengths are absolute
steps (>= 1) or fractions of the total steps (< 1).
"""

from dataclasses import dataclass
from typing import Any, Literal

import torch

from lightning_modules.components.schedules import (
    LinearWarmupConstant,
    WarmupCosineSchedule,
    resolve_steps,
)

LrScaling = Literal["sqrt", "linear", "none"]


@dataclass(frozen=True)
class OptimConfig:
    """AdamW and schedule settings (reference default config values).

    ``lr(step)`` peaks at ``base_lr·sqrt(global_batch/reference_batch)`` (``lr_scaling``), after a
    linear warmup of ``warmup``, and follows a cosine to ``min_lr``; weight decay follows a cosine
    from ``weight_decay`` to ``weight_decay_end`` over the whole run; prototype (``last_layer``)
    parameters get lr 0 for the first ``freeze_last_layer`` steps, then ``lr(step)``.
    """

    base_lr: float = 4e-3
    lr_scaling: LrScaling = "sqrt"
    reference_batch: int = 1024
    min_lr: float = 1e-6
    warmup: float = 0.1
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    betas: tuple[float, float] = (0.9, 0.999)
    layer_decay: float = 0.9
    patch_embed_lr_multiplier: float = 0.2
    freeze_last_layer: float = 0.01

    def peak_lr(self, global_batch: int) -> float:
        """``base_lr`` scaled to the global batch (sqrt by default, spec §5.1)."""
        ratio = global_batch / self.reference_batch
        scale = {"sqrt": ratio**0.5, "linear": ratio, "none": 1.0}
        if self.lr_scaling not in scale:
            raise ValueError(f"lr_scaling must be one of {sorted(scale)}, got {self.lr_scaling!r}")
        return self.base_lr * scale[self.lr_scaling]


@dataclass(frozen=True)
class TeacherConfig:
    """Teacher targets (``centering`` | ``sinkhorn_knopp``) and the temperature warmup.

    τ_t rises linearly from ``warmup_temp`` to ``temp`` over ``temp_warmup`` steps, then stays.
    """

    target_mode: Literal["centering", "sinkhorn_knopp"] = "centering"
    center_momentum: float = 0.9
    sk_iterations: int = 3
    temp: float = 0.07
    warmup_temp: float = 0.04
    temp_warmup: float = 0.3


@dataclass(frozen=True)
class DINOv2Schedules:
    """The lr, last-layer lr, weight-decay and teacher-temperature schedules of one run."""

    lr: WarmupCosineSchedule
    weight_decay: WarmupCosineSchedule
    teacher_temp: LinearWarmupConstant
    freeze_last_layer_steps: int

    @classmethod
    def build(
        cls, optim: OptimConfig, teacher: TeacherConfig, total_steps: int, global_batch: int
    ) -> "DINOv2Schedules":
        if total_steps < 1:
            raise ValueError(f"total steps must be >= 1 (set trainer.max_steps), got {total_steps}")
        return cls(
            lr=WarmupCosineSchedule(
                peak=optim.peak_lr(global_batch),
                final=optim.min_lr,
                total_steps=total_steps,
                warmup_steps=resolve_steps(optim.warmup, total_steps),
            ),
            weight_decay=WarmupCosineSchedule(
                peak=optim.weight_decay, final=optim.weight_decay_end, total_steps=total_steps
            ),
            teacher_temp=LinearWarmupConstant(
                start=teacher.warmup_temp,
                end=teacher.temp,
                warmup_steps=resolve_steps(teacher.temp_warmup, total_steps),
            ),
            freeze_last_layer_steps=resolve_steps(optim.freeze_last_layer, total_steps),
        )

    def values(self, step: int) -> dict[str, float]:
        """``lr``, ``last_layer_lr``, ``wd`` and ``teacher_temp`` at ``step``."""
        lr = self.lr(step)
        return {
            "lr": lr,
            # lr 0, not a shifted schedule or zeroed gradients: Adam moments still accumulate.
            "last_layer_lr": 0.0 if step < self.freeze_last_layer_steps else lr,
            "wd": self.weight_decay(step),
            "teacher_temp": self.teacher_temp(step),
        }

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> dict[str, float]:
        """Write this step's lr and wd (times each group's multipliers); returns ``values``."""
        values = self.values(step)
        for group in optimizer.param_groups:
            base = values["last_layer_lr"] if group.get("is_last_layer") else values["lr"]
            group["lr"] = base * group.get("lr_multiplier", 1.0)
            group["weight_decay"] = values["wd"] * group.get("wd_multiplier", 1.0)
        return values


def config_from(cls: type, values: Any) -> Any:
    """A config dataclass from a (Hydra) mapping; unknown keys fail with their names."""
    if isinstance(values, cls):
        return values
    values = dict(values or {})
    fields = set(cls.__dataclass_fields__)
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; known: {sorted(fields)}")
    if "betas" in values:
        values["betas"] = tuple(values["betas"])
    return cls(**values)
