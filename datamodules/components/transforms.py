"""Classification preprocessing: a deterministic part applied once, and seeded augmentation.

Augmentation draws from a ``torch.Generator`` seeded per sample and epoch, so a resumed run
sees exactly the crops and flips an uninterrupted run sees.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: Per-dataset channel statistics of the training split (mean, std) in [0, 1] units.
DATASET_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "digits": ((0.3053,), (0.3759,)),
}


def preprocess(
    images: torch.Tensor, dataset: str, image_size: int | None = None, channels: int | None = None
) -> torch.Tensor:
    """uint8 ``(N, C, H, W)`` → normalised float32 ``(N, channels, image_size, image_size)``.

    Grayscale images are replicated to 3 channels when ``channels=3`` (e.g. Fashion-MNIST as a
    32x32x3 stand-in for CIFAR-10); the statistics are replicated with them.
    """
    x = images.float().div_(255.0)
    if image_size is not None and x.shape[-1] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True)
    mean, std = DATASET_STATS[dataset]
    if channels is not None and channels != x.shape[1]:
        if x.shape[1] != 1:
            raise ValueError(f"cannot convert {x.shape[1]}-channel images to {channels} channels")
        x = x.expand(-1, channels, -1, -1)
        mean, std = mean * channels, std * channels
    mean_t = torch.tensor(mean).view(1, -1, 1, 1)
    std_t = torch.tensor(std).view(1, -1, 1, 1)
    return ((x - mean_t) / std_t).contiguous()


@dataclass(frozen=True)
class CropFlipAugment:
    """Random crop after zero padding, then horizontal flip: the standard CIFAR augmentation.

    ``pad`` = 0 disables the crop; ``flip`` = False disables the flip.
    """

    pad: int = 4
    flip: bool = True

    def __call__(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """image (C, H, W) → augmented (C, H, W)."""
        if self.pad > 0:
            _, h, w = image.shape
            padded = F.pad(image, (self.pad,) * 4)
            top, left = torch.randint(0, 2 * self.pad + 1, (2,), generator=generator).tolist()
            image = padded[:, top : top + h, left : left + w]
        if self.flip and torch.rand((), generator=generator).item() < 0.5:
            image = image.flip(-1)
        return image
