"""EMA teacher update after every optimizer step (spec §5.4; reference ``ssl_meta_arch.py``)."""

from typing import Any

import lightning as L
import torch

from lightning_modules.components.ema import update_momentum_foreach
from lightning_modules.components.schedules import WarmupCosineSchedule


class EMATeacherCallback(L.Callback):
    """``θ_t ← m·θ_t + (1 − m)·θ_s`` after every optimizer step, ``m`` cosine ``start → end``.

    The momentum of the update that follows optimizer step ``s`` (0-based) is a pure function of
    ``s`` and the run's total steps, so the callback keeps no training state and a resumed run
    applies exactly the updates of an uninterrupted one. The pairs to update come from the
    module's ``ema_pairs()``: (teacher, student) in pretraining, (student EMA, student) in
    distillation. Checkpoint callbacks run after this one (Lightning orders them last), so a
    checkpoint of step ``s`` holds the teacher after its update.

    Args:
        momentum_start: m at step 0 (0.992 default config, 0.994 L/g and distillation).
        momentum_end: m at the last step (1.0).
        total_steps: length of the cosine; None uses the trainer's total optimizer steps.
    """

    def __init__(
        self,
        momentum_start: float = 0.992,
        momentum_end: float = 1.0,
        total_steps: int | None = None,
    ) -> None:
        for name, m in (("momentum_start", momentum_start), ("momentum_end", momentum_end)):
            if not 0.0 <= m <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {m}")
        self.momentum_start = momentum_start
        self.momentum_end = momentum_end
        self.total_steps = total_steps

    def momentum(self, step: int, total_steps: int) -> float:
        """m for the update after optimizer step ``step``."""
        schedule = WarmupCosineSchedule(
            peak=self.momentum_start, final=self.momentum_end, total_steps=total_steps
        )
        return schedule(step)

    def _total(self, trainer: L.Trainer) -> int:
        return int(self.total_steps or trainer.estimated_stepping_batches)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not callable(getattr(pl_module, "ema_pairs", None)):
            raise TypeError(
                f"EMATeacherCallback needs a module with ema_pairs(); {type(pl_module).__name__} "
                "has none"
            )

    @torch.no_grad()
    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if trainer.fit_loop._should_accumulate():  # no optimizer step after this batch
            return
        step = max(trainer.global_step - 1, 0)  # the optimizer step just taken
        m = self.momentum(step, self._total(trainer))
        for target, source in pl_module.ema_pairs():
            update_momentum_foreach(target, source, m)
        pl_module.log("train/momentum", m, on_step=True, on_epoch=False)
