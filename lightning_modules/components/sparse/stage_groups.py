"""ResNet-18's residual-tied stage channels as prunable groups (spec §3, decision 12 ``joint``).

Every channel of a stage's residual stream is written by several producers (the stem or the
stage's 1x1 shortcut, and the conv2 of each block, all summed by the residual adds) and read by
several consumers (the next blocks' conv1, the next stage's shortcut, or the classifier). Removing
stream channel c therefore removes filter c of every producer (and its BN slice) and input
channel c of every consumer, so one selection vector w serves the whole group.
"""

from dataclasses import dataclass

from torch import nn

from lightning_modules.components.cnn import ResNet18
from lightning_modules.components.cnn.resnet_cifar import BLOCKS_PER_STAGE


@dataclass(frozen=True)
class Consumer:
    """A layer reading the group's channels: module path, its BN (None if absent)."""

    layer: str
    bn: str | None


@dataclass(frozen=True)
class StageGroup:
    """One residual stream's channels, named by module paths.

    Attributes:
        name: ``stage<k>`` (k = 0..3).
        producers: (conv, bn) pairs whose output channels form the stream.
        consumers: layers whose input channels are the stream, in forward order.
    """

    name: str
    producers: tuple[tuple[str, str], ...]
    consumers: tuple[Consumer, ...]


def _entry(block: int) -> tuple[Consumer, ...]:
    """The stream's consumers inside block ``block``: conv1, plus its 1x1 shortcut if any."""
    return (
        Consumer(f"blocks.{block}.conv1", f"blocks.{block}.bn1"),
        Consumer(f"blocks.{block}.shortcut.0", f"blocks.{block}.shortcut.1"),
    )


def resnet_stage_groups(model: ResNet18) -> list[StageGroup]:
    """The 4 stage groups of a (possibly pruned) CIFAR ResNet-18, in forward order."""
    groups = []
    n_stages = len(model.blocks) // BLOCKS_PER_STAGE
    for stage in range(n_stages):
        blocks = range(stage * BLOCKS_PER_STAGE, (stage + 1) * BLOCKS_PER_STAGE)
        first = blocks[0]
        writer = ("conv1", "bn1") if stage == 0 else (
            f"blocks.{first}.shortcut.0", f"blocks.{first}.shortcut.1"
        )  # fmt: skip
        producers = (writer, *((f"blocks.{b}.conv2", f"blocks.{b}.bn2") for b in blocks))
        readers = [Consumer(f"blocks.{b}.conv1", f"blocks.{b}.bn1") for b in blocks]
        if stage > 0:
            readers = readers[1:]  # the stage's first conv1 reads the previous stream
        nxt = blocks[-1] + 1
        readers += list(_entry(nxt)) if stage < n_stages - 1 else [Consumer("linear", None)]
        groups.append(StageGroup(f"stage{stage}", producers, tuple(readers)))
    return groups


def consumer_group_size(model: nn.Module, layer: str) -> int:
    """Columns per input channel of a consumer: k·k for a conv, 1 for the pooled classifier."""
    module = model.get_submodule(layer)
    if isinstance(module, nn.Conv2d):
        return module.kernel_size[0] * module.kernel_size[1]
    return 1
