"""Image classification data: MNIST, Fashion-MNIST, CIFAR-10 (torchvision) and sklearn digits."""

from pathlib import Path

import torch
from torch.utils.data import DataLoader

from datamodules.components.image_tensors import load_image_tensors
from datamodules.components.tensor_dataset import SeededTensorDataset
from datamodules.components.transforms import CropFlipAugment, preprocess
from datamodules.resumable_datamodule import ResumableDataModule


class ClassificationDataModule(ResumableDataModule):
    """Train / validation / test loaders for one classification dataset.

    Validation is a fixed, seeded split of the training set; testing uses the official test set.
    Deterministic preprocessing (scaling, resizing, channel replication, normalisation) runs once
    on the whole split; augmentation (``crop_pad``, ``hflip``) runs per sample with seeded RNG.

    Args:
        dataset: ``mnist`` | ``fashion_mnist`` | ``cifar10`` | ``digits``.
        data_dir: torchvision root holding e.g. ``MNIST/raw``.
        val_size: training images held out for validation.
        image_size / channels: output geometry (None keeps the dataset's own).
        crop_pad / hflip: training augmentation (0 / False disable it).
        download: let torchvision download missing data (needs internet).
        subset: keep only the first N training images (quick runs and tests).
    """

    def __init__(
        self,
        dataset: str,
        data_dir: str,
        batch_size: int = 128,
        eval_batch_size: int = 512,
        num_workers: int = 0,
        val_size: int = 5000,
        image_size: int | None = None,
        channels: int | None = None,
        crop_pad: int = 0,
        hflip: bool = False,
        download: bool = False,
        subset: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        self.save_hyperparameters(logger=False)
        self.dataset = dataset
        self.data_dir = Path(data_dir)
        self.eval_batch_size = eval_batch_size
        self.num_classes = 10
        self.data_train: SeededTensorDataset | None = None
        self.data_val: SeededTensorDataset | None = None
        self.data_test: SeededTensorDataset | None = None

    def prepare_data(self) -> None:
        if self.hparams.download:
            for train in (True, False):
                load_image_tensors(self.dataset, self.data_dir, train, download=True)

    def setup(self, stage: str | None = None) -> None:
        if self.data_train is not None:
            return
        hp = self.hparams
        images, labels = load_image_tensors(self.dataset, self.data_dir, train=True)
        if hp.subset is not None:
            images, labels = images[: hp.subset], labels[: hp.subset]
        if not 0 < hp.val_size < len(images):
            raise ValueError(
                f"data.val_size={hp.val_size} must be in (0, {len(images)}) for '{self.dataset}'"
            )
        perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(hp.seed))
        val_idx, train_idx = perm[: hp.val_size], perm[hp.val_size :]
        x = preprocess(images, self.dataset, hp.image_size, hp.channels)
        augment = CropFlipAugment(hp.crop_pad, hp.hflip) if hp.crop_pad or hp.hflip else None
        self.data_train = SeededTensorDataset(x[train_idx], labels[train_idx], augment)
        self.data_val = SeededTensorDataset(x[val_idx], labels[val_idx])
        test_images, test_labels = load_image_tensors(self.dataset, self.data_dir, train=False)
        x_test = preprocess(test_images, self.dataset, hp.image_size, hp.channels)
        self.data_test = SeededTensorDataset(x_test, test_labels)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one preprocessed image (after ``setup``)."""
        if self.data_train is None:
            raise RuntimeError("call setup() first")
        return tuple(self.data_train.images.shape[1:])

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.data_train, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.data_val, train=False, batch_size=self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.data_test, train=False, batch_size=self.eval_batch_size)
