"""VGG-16 with BatchNorm in its CIFAR form (one fully connected layer), Simonyan & Zisserman 2015."""

from collections.abc import Sequence

import torch
from torch import nn

#: Layer plan of VGG-16: output widths of the 13 convs, "M" = 2x2 max-pool.
VGG16_PLAN: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip


class VGG16BN(nn.Module):
    """VGG-16-BN for 32x32 inputs: 13 × (conv3x3 with bias → BN → ReLU), 5 max-pools, fc 512→10.

    Args:
        plan: conv widths and "M" pool markers; the default has 14,728,266 params. A pruned
            network passes its own widths (e.g. Li et al.'s "pruned-A").

    Input (B, in_channels, 32, 32) → logits (B, num_classes).
    """

    def __init__(
        self,
        plan: Sequence[int | str] = VGG16_PLAN,
        in_channels: int = 3,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_channels
        for item in plan:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            out = int(item)
            layers += [nn.Conv2d(width, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
            width = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
