"""ResNet-18 in its CIFAR form (He et al. 2016): 3x3 stem, no max-pool, 4 stages of 2 BasicBlocks."""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

STAGE_WIDTHS = (64, 128, 256, 512)
STAGE_STRIDES = (1, 2, 2, 2)
BLOCKS_PER_STAGE = 2


class BasicBlock(nn.Module):
    """conv3x3 → BN → ReLU → conv3x3 → BN, plus an identity or 1x1 conv+BN shortcut, then ReLU.

    ``mid`` is the block-internal width (conv1's filters), which entropic pruning shrinks; the
    residual-tied ``in_planes``/``planes`` shrink only with joint stage pruning.
    """

    def __init__(self, in_planes: int, planes: int, stride: int, mid: int | None = None) -> None:
        super().__init__()
        mid = planes if mid is None else int(mid)
        self.conv1 = nn.Conv2d(in_planes, mid, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR ResNet-18; default 11,173,962 params.

    Args:
        internal_widths: the 8 block-internal widths in forward order (None = the stage width).
        stage_widths: the 4 residual-stream widths (stem = stage 1); None = (64, 128, 256, 512).
            Joint stage pruning (``prune.resnet_stage=joint``) shrinks them.

    Input (B, in_channels, 32, 32) → logits (B, num_classes).
    """

    def __init__(
        self,
        internal_widths: Sequence[int] | None = None,
        in_channels: int = 3,
        num_classes: int = 10,
        stage_widths: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        n_blocks = len(STAGE_WIDTHS) * BLOCKS_PER_STAGE
        mids = list(internal_widths) if internal_widths is not None else [None] * n_blocks
        if len(mids) != n_blocks:
            raise ValueError(f"ResNet18 needs {n_blocks} internal widths, got {len(mids)}")
        stages = [int(w) for w in (STAGE_WIDTHS if stage_widths is None else stage_widths)]
        if len(stages) != len(STAGE_WIDTHS):
            raise ValueError(f"ResNet18 needs {len(STAGE_WIDTHS)} stage widths, got {len(stages)}")
        self.conv1 = nn.Conv2d(in_channels, stages[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stages[0])
        blocks: list[nn.Module] = []
        in_planes = stages[0]
        for stage, (planes, stride) in enumerate(zip(stages, STAGE_STRIDES, strict=True)):
            for i in range(BLOCKS_PER_STAGE):
                mid = mids[stage * BLOCKS_PER_STAGE + i]
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1, mid))
                in_planes = planes
        self.blocks = nn.Sequential(*blocks)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.blocks(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)
