"""Periodic linear probing of a self-supervised backbone during training (spec §9, decision D9)."""

import warnings
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import lightning as L
from lightning.pytorch.loggers import WandbLogger
from torch import nn

from callbacks.knn_eval import PeriodicProbeCallback
from lightning_modules.components.linear_probe import (
    AVGPOOL,
    LINEAR_PROBE_LRS,
    N_LAST_BLOCKS,
    LinearProbeResult,
    ProbeConfig,
    extract_pooled_features,
    probe_grid,
    run_linear_probe,
)


class LinearProbeCallback(PeriodicProbeCallback):
    """Trains the linear-classifier grid on frozen features; reports the best on validation.

    Features (CLS of the last ``max(n_last_blocks)`` blocks + mean patch token) are computed
    once per image of the ``train`` / ``val`` / ``test`` subsets (eval transform, no train
    augmentation: the short in-training variant of the protocol) and shared by every classifier.

    Logs ``probe/linear_top1`` (best classifier, validation accuracy, selected on validation as
    the reference does), ``probe/linear_test_top1`` (its test accuracy),
    ``probe/linear_best_lr``, ``probe/linear_best_n_blocks``, ``probe/linear_best_avgpool``,
    and to W&B also ``probe/linear_best_config`` (e.g. ``blocks4_avgpool1_lr0.001``).

    Extra args (the rest as in ``PeriodicProbeCallback``; ``val_size`` defaults to 500 here):
        lrs: the lr grid (default: the reference code's 13 values).
        n_last_blocks: block counts of the grid (1, 4).
        avgpool: avgpool options of the grid (False, True).
        steps: SGD steps (cosine schedule to 0 over them).
        probe_batch_size: SGD batch (``lr_eff = lr·probe_batch_size/256``).
    """

    def __init__(
        self,
        *args: Any,
        val_size: int | float = 500,
        lrs: Sequence[float] = LINEAR_PROBE_LRS,
        n_last_blocks: Sequence[int] = N_LAST_BLOCKS,
        avgpool: Sequence[bool] = AVGPOOL,
        steps: int = 1000,
        probe_batch_size: int = 256,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, val_size=val_size, **kwargs)
        if val_size <= 0:
            raise ValueError("the linear probe selects on a validation set: val_size must be > 0")
        self.configs = probe_grid(n_last_blocks, avgpool, lrs)
        self.n_max = max(n_last_blocks)
        self.steps, self.probe_batch_size = steps, probe_batch_size

    def grid_for(self, backbone: nn.Module) -> list[ProbeConfig]:
        """The grid, with block counts above the backbone's depth clipped to it (warned)."""
        depth = getattr(backbone, "num_blocks", None)
        if depth is None or self.n_max <= depth:
            return self.configs
        warnings.warn(
            f"linear probe: n_last_blocks up to {self.n_max} requested, but the backbone has "
            f"{depth} blocks; using at most {depth}",
            stacklevel=2,
        )
        clipped = [replace(c, n_last_blocks=min(c.n_last_blocks, depth)) for c in self.configs]
        return list(dict.fromkeys(clipped))

    def probe(self, backbone: nn.Module) -> LinearProbeResult:
        """Extract features of the three subsets and train the grid (standalone use)."""
        configs = self.grid_for(backbone)
        n_max = max(c.n_last_blocks for c in configs)
        data = self.splits(backbone)
        feats = {
            split: (
                extract_pooled_features(backbone, d.batches(self.batch_size), n_max),
                d.labels,
            )
            for split, d in data.items()
        }
        num_classes = int(max(int(d.labels.max()) for d in data.values() if len(d))) + 1
        return run_linear_probe(
            feats["train"], feats["val"], feats["test"] if len(data["test"]) else None,
            num_classes=num_classes, configs=configs, steps=self.steps,
            batch_size=self.probe_batch_size, seed=self.seed,
            device=next(backbone.parameters()).device,
        )  # fmt: skip

    def evaluate(self, backbone: nn.Module) -> dict[str, Any]:
        result = self.probe(backbone)
        metrics: dict[str, Any] = {
            "probe/linear_top1": result.val_top1,
            "probe/linear_best_lr": result.best.lr,
            "probe/linear_best_n_blocks": float(result.best.n_last_blocks),
            "probe/linear_best_avgpool": float(result.best.avgpool),
            "probe/linear_best_config": result.best.name,
        }
        if result.test_top1 is not None:
            metrics["probe/linear_test_top1"] = result.test_top1
        return metrics

    def publish(self, trainer: L.Trainer, pl_module: L.LightningModule, metrics: dict) -> None:
        """Numbers through ``pl_module.log``; the config name (a string) to W&B loggers only."""
        name = metrics.pop("probe/linear_best_config")
        super().publish(trainer, pl_module, metrics)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_metrics({"probe/linear_best_config": name}, step=trainer.global_step)
