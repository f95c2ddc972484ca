"""Base datamodule whose training position is checkpointed, so mid-epoch resume is exact."""

from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset

from datamodules.components.seeded_sampler import SeededEpochSampler


class ResumableDataModule(L.LightningDataModule):
    """Builds loaders on ``SeededEpochSampler`` and stores (epoch, consumed batches) in checkpoints.

    Lightning restores a datamodule's ``state_dict`` before it asks for the train loader, so the
    sampler can skip exactly the batches the interrupted epoch had already trained on.
    """

    def __init__(self, batch_size: int, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self._resume_at: tuple[int, int] | None = None

    def _loader(self, dataset: Dataset, train: bool, batch_size: int | None = None) -> DataLoader:
        """Training loaders shuffle, drop the last partial batch and honour a pending resume."""
        sampler = SeededEpochSampler(len(dataset), seed=self.seed, shuffle=train)
        if train and self._resume_at is not None:
            epoch, batches = self._resume_at
            sampler.set_epoch(epoch)
            sampler.skip_in_epoch(epoch, batches * self.batch_size)
            self._resume_at = None
        return DataLoader(
            dataset,
            batch_size=batch_size or self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            drop_last=train,
        )

    def state_dict(self) -> dict[str, Any]:
        trainer = self.trainer
        if trainer is None:
            return {}
        loop = trainer.fit_loop
        # `processed` counts the batch whose on_train_batch_end is saving this checkpoint.
        return {
            "epoch": loop.epoch_progress.current.processed,
            "consumed_batches": loop.epoch_loop.batch_progress.current.processed,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            self._resume_at = (state_dict["epoch"], state_dict["consumed_batches"])
