"""LeNet-5 variants for 28x28 inputs (MNIST-like).

Both take their layer widths as arguments so that a channel-pruned network can be rebuilt
from the widths stored in its checkpoint (entropic sparsification, arXiv 2404.04734).
"""

from collections.abc import Sequence

import torch
from torch import nn


class LeNet5(nn.Module):
    """Classic LeNet-5 with ReLU and max-pooling: conv 1→6 (5x5, pad 2), conv 6→16, fc 400→120→84→10.

    Args:
        widths: (conv1, conv2, fc1, fc2) output widths; default (6, 16, 120, 84) has 61,706 params.
        in_channels: image channels.
        num_classes: classifier outputs.

    Input (B, in_channels, 28, 28) → logits (B, num_classes).
    """

    def __init__(
        self,
        widths: Sequence[int] = (6, 16, 120, 84),
        in_channels: int = 1,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        c1, c2, f1, f2 = (int(w) for w in widths)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * 5 * 5, f1),
            nn.ReLU(),
            nn.Linear(f1, f2),
            nn.ReLU(),
            nn.Linear(f2, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class LeNet5Caffe(nn.Module):
    """LeNet-5 as in Caffe's MNIST example: conv 1→20 (5x5), conv 20→50, fc 800→500→10.

    Args:
        widths: (conv1, conv2, fc1) output widths; default (20, 50, 500) has 431,080 params.

    Input (B, in_channels, 28, 28) → logits (B, num_classes).
    """

    def __init__(
        self,
        widths: Sequence[int] = (20, 50, 500),
        in_channels: int = 1,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        c1, c2, f1 = (int(w) for w in widths)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * 4 * 4, f1),
            nn.ReLU(),
            nn.Linear(f1, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
