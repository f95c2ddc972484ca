"""Store the resolved run config in every checkpoint and the W&B run id beside the checkpoints."""

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import WandbLogger

WANDB_ID_FILE = "wandb_run_id.txt"


class RunMetadataCallback(L.Callback):
    """Adds ``checkpoint["run_config"]`` (plain containers) and writes ``wandb_run_id.txt``.

    The config lets ``experiments/evaluate.py`` (and pruned-model reloading) rebuild the exact
    architecture from a checkpoint alone; the run id lets ``resume_dir=`` continue the same W&B run.
    """

    def __init__(self, run_config: dict[str, Any], checkpoint_dir: str) -> None:
        self.run_config = run_config
        self.checkpoint_dir = Path(checkpoint_dir)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
                (self.checkpoint_dir / WANDB_ID_FILE).write_text(logger.experiment.id + "\n")

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint["run_config"] = self.run_config


def read_wandb_run_id(checkpoint_dir: str | Path) -> str | None:
    """The W&B run id stored beside the checkpoints of a run, if any."""
    path = Path(checkpoint_dir) / WANDB_ID_FILE
    return path.read_text().strip() if path.is_file() else None
