"""Step-indexed schedules at the spec §5.2 endpoints and on resume (spec §13.9)."""

import math

import pytest

from lightning_modules.components.schedules import (
    LinearWarmupConstant,
    WarmupCosineSchedule,
    resolve_steps,
)

T, W = 1000, 100


def cosine(s: int, peak: float, final: float, start: int, total: int) -> float:
    """The spec's cosine segment, written out independently."""
    return final + 0.5 * (peak - final) * (1 + math.cos(math.pi * (s - start) / (total - start)))


def test_lr_warmup_cosine_endpoints() -> None:
    lr = WarmupCosineSchedule(peak=4e-3, final=1e-6, total_steps=T, warmup_steps=W)
    assert lr(0) == 0.0  # inclusive linspace starts at v0 = 0
    assert lr(W - 1) == pytest.approx(4e-3)  # ... and ends at the peak
    assert lr(W) == pytest.approx(4e-3)  # cosine starts at the peak
    assert lr(T - 1) == pytest.approx(cosine(T - 1, 4e-3, 1e-6, W, T))
    assert 1e-6 < lr(T - 1) < 1e-6 + 1e-7
    assert lr(T) == 1e-6
    assert lr(T + 50) == 1e-6
    assert lr(W // 2) == pytest.approx(4e-3 * (W // 2) / (W - 1))


def test_frozen_prefix_shifts_warmup() -> None:
    f = 10
    sched = WarmupCosineSchedule(peak=1.0, final=0.0, total_steps=T, warmup_steps=W, freeze_steps=f)
    assert sched(0) == 0.0 and sched(f - 1) == 0.0
    assert sched(f) == 0.0 and sched(f + W - 1) == pytest.approx(1.0)
    assert sched(f + W) == pytest.approx(1.0)
    assert sched(T - 1) == pytest.approx(cosine(T - 1, 1.0, 0.0, f + W, T))
    assert sched(T) == 0.0


@pytest.mark.parametrize(
    "start,end", [(0.04, 0.4), (0.04, 0.2), (0.992, 1.0), (0.994, 1.0)]
)  # weight decay (default, L/g) and teacher momentum (default, L/g): whole-run cosines
def test_whole_run_cosines(start: float, end: float) -> None:
    sched = WarmupCosineSchedule(peak=start, final=end, total_steps=T)
    assert sched(0) == pytest.approx(start)
    assert sched(T // 2) == pytest.approx((start + end) / 2)
    assert sched(T - 1) == pytest.approx(cosine(T - 1, start, end, 0, T))
    assert sched(T) == end


def test_teacher_temperature_warmup() -> None:
    w = resolve_steps(0.30, T)
    tau = LinearWarmupConstant(start=0.04, end=0.07, warmup_steps=w)
    assert w == 300
    assert tau(0) == pytest.approx(0.04)
    assert tau(w - 1) == pytest.approx(0.07)
    assert tau(w) == 0.07
    assert tau(T - 1) == 0.07 and tau(T) == 0.07


def test_resolve_steps_fraction_or_absolute() -> None:
    assert resolve_steps(0.1, 125_000) == 12_500
    assert resolve_steps(0.01, 125_000) == 1_250
    assert resolve_steps(37_500, 125_000) == 37_500
    assert resolve_steps(0, 10) == 0
    with pytest.raises(ValueError):
        resolve_steps(-1, 10)


def test_resume_gives_identical_values() -> None:
    """Schedules are pure functions of the step: a fresh object at step s equals a long run."""

    def build():
        return (
            WarmupCosineSchedule(peak=1e-3, final=1e-6, total_steps=T, warmup_steps=W),
            WarmupCosineSchedule(peak=0.04, final=0.4, total_steps=T),
            WarmupCosineSchedule(peak=0.992, final=1.0, total_steps=T),
            LinearWarmupConstant(start=0.04, end=0.07, warmup_steps=300),
        )

    uninterrupted = build()
    history = {s: [f(s) for f in uninterrupted] for s in range(T + 1)}
    resumed = build()  # as after loading a checkpoint at step 437
    for s in range(437, T + 1):
        assert [f(s) for f in resumed] == history[s]
