"""Small labelled image sets for probing frozen features (kNN, linear probe, feature pictures).

Images are loaded with ``load_image_tensors`` (mnist, fashion_mnist, cifar10, digits),
subsampled with a private generator and passed through the spec §9 evaluation transform, the
same steps as ``build_eval_transform`` applied batched: ``Resize(crop·256/224, bicubic) →
CenterCrop(crop)`` once, kept as uint8; grayscale → 3 channels and ImageNet normalisation per
batch (``LabelledImages.batches``). Splits:

- ``train``: a subset of the train split (the kNN bank, the linear probe's training set);
- ``val``: a disjoint subset of the train split (linear-probe model selection);
- ``test``: a subset of the test split (kNN queries, the linear probe's reported test accuracy).
"""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torchvision.transforms import InterpolationMode, v2

from datamodules.components.image_tensors import load_image_tensors
from datamodules.components.multicrop_transforms import IMAGENET_MEAN, IMAGENET_STD

SPLITS = ("train", "val", "test")


def normalise_batch(images: Tensor) -> Tensor:
    """uint8 (B, 1|3, S, S) → float32 (B, 3, S, S): grayscale to RGB, then ImageNet statistics."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images.expand(-1, 3, -1, -1).float() / 255.0 - mean) / std


def resize_crop_batch(
    images: Tensor, crop_size: int, resize_ratio: float = 256 / 224, chunk_size: int = 1024
) -> Tensor:
    """uint8 (N, C, H, W) → uint8 (N, C, crop, crop): ``Resize(crop·ratio, bicubic)`` then
    ``CenterCrop(crop)``, the geometric part of the eval transform (channel-wise, so grayscale
    may stay single-channel until ``normalise_batch``)."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            f"expected uint8 (N, 1|3, H, W) images, got {images.dtype} {tuple(images.shape)}"
        )
    transform = v2.Compose(
        [
            v2.Resize(round(crop_size * resize_ratio), interpolation=InterpolationMode.BICUBIC),
            v2.CenterCrop(crop_size),
        ]
    )
    out = [transform(images[i : i + chunk_size]) for i in range(0, len(images), chunk_size)]
    return torch.cat(out) if out else images.new_empty(0, images.shape[1], crop_size, crop_size)


def eval_transform_batch(
    images: Tensor, crop_size: int, resize_ratio: float = 256 / 224, chunk_size: int = 1024
) -> Tensor:
    """uint8 (N, 1|3, H, W) → float32 (N, 3, crop, crop), equal to ``build_eval_transform``."""
    return normalise_batch(resize_crop_batch(images, crop_size, resize_ratio, chunk_size))


@dataclass
class LabelledImages:
    """Eval-cropped uint8 images (N, 1|3, S, S) and labels (N,) int64.

    Stored as uint8 (a quarter of float32, grayscale unexpanded); ``batches`` yields them
    normalised, float32 (B, 3, S, S).
    """

    images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int = 256) -> Iterator[Tensor]:
        for start in range(0, len(self.images), batch_size):
            yield normalise_batch(self.images[start : start + batch_size])


def build_labelled_splits(
    dataset: str,
    data_dir: str | Path,
    image_size: int,
    train_size: int | None = 2000,
    val_size: int | float = 500,
    test_size: int | None = 1000,
    seed: int = 0,
    resize_ratio: float = 256 / 224,
) -> dict[str, LabelledImages]:
    """``{"train", "val", "test"}`` labelled sets of ``dataset``, eval-transformed to ``image_size``.

    ``val`` is drawn first from the train split (``val_size`` images, or that fraction of the
    split when it is a float below 1), ``train`` from the rest (None: all of it); ``test`` from
    the test split (None: all of it). Subsets depend only on ``seed``.
    """
    generator = torch.Generator().manual_seed(seed)
    images, labels = load_image_tensors(dataset, data_dir, train=True)
    order = torch.randperm(len(images), generator=generator)
    if isinstance(val_size, float) and val_size < 1:
        val_size = round(val_size * len(images))
    val_size = int(val_size)
    if val_size >= len(order):
        raise ValueError(f"val_size {val_size} leaves no training images of {dataset}")
    val_idx, rest = order[:val_size], order[val_size:]
    train_idx = rest if train_size is None else rest[:train_size]
    test_images, test_labels = load_image_tensors(dataset, data_dir, train=False)
    test_idx = torch.randperm(len(test_images), generator=generator)[:test_size]
    picks = {
        "train": (images, labels, train_idx),
        "val": (images, labels, val_idx),
        "test": (test_images, test_labels, test_idx),
    }
    return {
        split: LabelledImages(resize_crop_batch(x[idx], image_size, resize_ratio), y[idx])
        for split, (x, y, idx) in picks.items()
    }
