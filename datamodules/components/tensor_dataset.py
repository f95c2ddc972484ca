"""An in-memory image dataset addressed by ``(index, sample_seed)`` keys."""

from collections.abc import Callable

import torch
from torch.utils.data import Dataset

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class SeededTensorDataset(Dataset):
    """Preprocessed images ``(N, C, H, W)`` float and labels ``(N,)``; optional seeded augmentation.

    ``dataset[(i, seed)]`` returns ``(image (C, H, W), label)``; the augmentation draws only from
    a generator seeded with ``seed``, so the same key always gives the same sample.
    """

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, augment: Augment | None = None
    ) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels
        self.augment = augment

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = key
        image = self.images[index]
        if self.augment is not None:
            image = self.augment(image, torch.Generator().manual_seed(seed))
        return image, self.labels[index]
