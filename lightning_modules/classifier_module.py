"""Supervised image classification: the pre-trained CNNs that entropic sparsification starts from."""

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_modules.components.schedules import WarmupCosineSchedule, resolve_steps

OptimizerFactory = Callable[..., torch.optim.Optimizer]


class ClassifierLitModule(L.LightningModule):
    """Cross-entropy training of ``net`` with top-1 accuracy per stage.

    The learning rate follows a per-step warmup + cosine schedule (a pure function of the global
    step, driven by ``LambdaLR``), so resuming restores it exactly.

    Args:
        net: a classifier mapping images (B, C, H, W) to logits (B, num_classes).
        optimizer: a partially applied optimizer (Hydra ``_partial_: true``) taking params.
        warmup_steps: linear warmup length, absolute steps or a fraction of all steps.
        final_lr_factor: the cosine ends at ``final_lr_factor × lr``.
        num_classes: number of classes for the accuracy metrics.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory,
        warmup_steps: float = 0,
        final_lr_factor: float = 0.0,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False, ignore=["net", "optimizer"])
        self.net = net
        self.optimizer_factory = optimizer
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str, metric) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        metric.update(logits, y)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True,
                 sync_dist=not on_step)  # fmt: skip
        self.log(f"{stage}/acc", metric, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        return self._step(batch, "train", self.train_acc)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val", self.val_acc)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test", self.test_acc)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory(params=self.parameters())
        total = int(self.trainer.estimated_stepping_batches)
        schedule = WarmupCosineSchedule(
            peak=1.0,
            final=self.hparams.final_lr_factor,
            total_steps=total,
            warmup_steps=resolve_steps(self.hparams.warmup_steps, total),
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
