"""Load classification datasets as uint8 image tensors through their real loaders.

Every loader returns ``images (N, C, H, W) uint8`` and ``labels (N,) int64``. Holding the data as
tensors (rather than PIL images) lets deterministic preprocessing run once, batched.
"""

from pathlib import Path

import numpy as np
import torch
from torchvision import datasets

from datamodules.components.errors import DatasetNotFoundError

TORCHVISION_DATASETS = {
    "mnist": datasets.MNIST,
    "fashion_mnist": datasets.FashionMNIST,
    "cifar10": datasets.CIFAR10,
}
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


def load_image_tensors(
    name: str, root: str | Path, train: bool, download: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, C, H, W)`` uint8 and labels ``(N,)`` of the train or test split of ``name``."""
    if name == "digits":
        return _load_digits(train)
    if name not in TORCHVISION_DATASETS:
        known = ", ".join(sorted([*TORCHVISION_DATASETS, "digits"]))
        raise ValueError(f"Unknown dataset '{name}'. Known datasets: {known}")
    try:
        ds = TORCHVISION_DATASETS[name](root=str(root), train=train, download=download)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted ..."
        raise DatasetNotFoundError(name, root) from err
    data = ds.data
    images = torch.as_tensor(np.asarray(data))
    images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
    labels = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
    return images.contiguous(), labels


def _load_digits(train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits (1,797 images, ships with the package); fixed stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    idx_train, idx_test = train_test_split(
        np.arange(len(images)),
        test_size=DIGITS_TEST_FRACTION,
        random_state=DIGITS_SPLIT_SEED,
        stratify=bunch.target,
    )
    idx = idx_train if train else idx_test
    return (
        torch.from_numpy(images[idx]).unsqueeze(1).contiguous(),
        torch.from_numpy(bunch.target[idx]).long(),
    )
