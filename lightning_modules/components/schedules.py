"""Step-indexed schedules: every value is a pure function of the global step.

Because a schedule holds no state, a run resumed at step ``s`` sees exactly the values an
uninterrupted run sees (DINOv2 spec, Project decision D4).
"""

import math
from dataclasses import dataclass


def resolve_steps(length: float, total_steps: int) -> int:
    """A length given as absolute steps (>= 1) or as a fraction of ``total_steps`` (< 1)."""
    if length < 0:
        raise ValueError(f"schedule length must be >= 0, got {length}")
    if 0 < length < 1:
        return round(length * total_steps)
    return int(length)


@dataclass(frozen=True)
class WarmupCosineSchedule:
    """Freeze → linear warmup → half-cosine decay → constant.

    ``s < F``: 0; ``F <= s < F+W``: inclusive linspace from ``start`` to ``peak``;
    ``F+W <= s < T``: cosine from ``peak`` to ``final``; ``s >= T``: ``final``.
    """

    peak: float
    final: float
    total_steps: int
    warmup_steps: int = 0
    start: float = 0.0
    freeze_steps: int = 0

    def __call__(self, step: int) -> float:
        f, w, t = self.freeze_steps, self.warmup_steps, self.total_steps
        if step < f:
            return 0.0
        if step < f + w:
            if w == 1:
                return self.peak
            return self.start + (self.peak - self.start) * (step - f) / (w - 1)
        if step >= t:
            return self.final
        progress = (step - f - w) / max(1, t - f - w)
        return self.final + 0.5 * (self.peak - self.final) * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class LinearWarmupConstant:
    """Linear ramp from ``start`` to ``end`` over ``warmup_steps`` (inclusive), then ``end``."""

    start: float
    end: float
    warmup_steps: int

    def __call__(self, step: int) -> float:
        if step >= self.warmup_steps:
            return self.end
        if self.warmup_steps <= 1:
            return self.end
        return self.start + (self.end - self.start) * step / (self.warmup_steps - 1)
