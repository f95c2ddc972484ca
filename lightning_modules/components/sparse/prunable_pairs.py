"""Which channels of each supported CNN the entropic sparsification may remove (spec §2.7, §3).

A *pair* names a producer layer whose output channels are pruned, the BN that normalises them
(if any) and the consumer layer whose input weights carry the selection vector w. Names are
module paths (``model.get_submodule(name)``), so one list serves the original network and
every pruned copy of it. Image channels and classifier outputs are never pruned; ResNet-18's
residual-tied stage channels are kept and only each BasicBlock's internal channel is pruned.
"""

import itertools
from dataclasses import dataclass

from torch import nn

from lightning_modules.components.cnn import VGG16BN, LeNet5, LeNet5Caffe, ResNet18


@dataclass(frozen=True)
class PrunablePair:
    """One prunable channel set, named by module paths.

    Attributes:
        producer: Conv2d/Linear whose output channels (filters / neurons) are removed.
        producer_bn: BatchNorm directly after the producer, sliced with it; None if absent.
        consumer: the next Conv2d/Linear reading those channels; its input columns are removed.
        consumer_bn: BatchNorm after the consumer (receives the refit intercept when the
            consumer has no bias); None if absent.
        flatten_group_size: for a Linear consumer after a flatten, the H·W input features of
            one producer channel (1 otherwise; conv consumers group by their own k·k).
    """

    producer: str
    producer_bn: str | None
    consumer: str
    consumer_bn: str | None
    flatten_group_size: int = 1


def _indexed(prefix: str, seq: nn.Sequential, kind: type[nn.Module]) -> list[str]:
    return [f"{prefix}.{i}" for i, m in enumerate(seq) if isinstance(m, kind)]


def _lenet_pairs(model: nn.Module) -> list[PrunablePair]:
    convs = _indexed("features", model.features, nn.Conv2d)
    fcs = _indexed("classifier", model.classifier, nn.Linear)
    pairs = [PrunablePair(convs[0], None, convs[1], None)]
    last_conv = model.get_submodule(convs[-1])
    first_fc = model.get_submodule(fcs[0])
    group = first_fc.in_features // last_conv.out_channels
    pairs.append(PrunablePair(convs[-1], None, fcs[0], None, group))
    pairs += [PrunablePair(a, None, b, None) for a, b in itertools.pairwise(fcs)]
    return pairs


def _vgg_pairs(model: VGG16BN) -> list[PrunablePair]:
    convs = _indexed("features", model.features, nn.Conv2d)
    bns = _indexed("features", model.features, nn.BatchNorm2d)
    pairs = [
        PrunablePair(convs[i], bns[i], convs[i + 1], bns[i + 1]) for i in range(len(convs) - 1)
    ]
    fc = model.classifier[1]
    group = fc.in_features // model.get_submodule(convs[-1]).out_channels
    pairs.append(PrunablePair(convs[-1], bns[-1], "classifier.1", None, group))
    return pairs


def _resnet_pairs(model: ResNet18) -> list[PrunablePair]:
    return [
        PrunablePair(f"blocks.{i}.conv1", f"blocks.{i}.bn1", f"blocks.{i}.conv2", f"blocks.{i}.bn2")
        for i in range(len(model.blocks))
    ]


def prunable_pairs(model: nn.Module) -> list[PrunablePair]:
    """The ordered (forward order) prunable pairs of a supported network.

    Raises:
        TypeError: for an unsupported architecture.
    """
    if isinstance(model, LeNet5 | LeNet5Caffe):
        return _lenet_pairs(model)
    if isinstance(model, VGG16BN):
        return _vgg_pairs(model)
    if isinstance(model, ResNet18):
        return _resnet_pairs(model)
    raise TypeError(
        f"no prunable-pair plan for {type(model).__name__}; supported: "
        "LeNet5, LeNet5Caffe, VGG16BN, ResNet18"
    )


def expected_input_shape(model: nn.Module) -> tuple[int, int, int]:
    """(C, H, W) of one input image of a supported network: 28x28 for LeNets, 32x32 otherwise."""
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    side = 28 if isinstance(model, LeNet5 | LeNet5Caffe) else 32
    return (first_conv.in_channels, side, side)
