"""Physical removal of channels, and rebuilding slim networks from their widths (spec §2.7, R1, R3).

``remove_channels`` keeps filters K of the producer (weight rows, bias), slices its BN (weight,
bias, running_mean, running_var; num_batches_tracked unchanged), keeps the consumer's input
columns of K (or writes refit weights there) and updates the size attributes so ``repr`` and
re-construction agree; ``remove_group_channels`` does the same for ResNet's residual-tied stage
channels (several producers, several consumers). ``widths_of`` / ``build_pruned`` give the constructor widths of a pruned
network and rebuild it, so a checkpoint can be loaded without pickled modules.
"""

from collections.abc import Sequence

import torch
from torch import nn

from lightning_modules.components.cnn import VGG16BN, LeNet5, LeNet5Caffe, ResNet18
from lightning_modules.components.cnn.resnet_cifar import BLOCKS_PER_STAGE, STAGE_WIDTHS
from lightning_modules.components.sparse.prunable_pairs import PrunablePair
from lightning_modules.components.sparse.refit import kept_columns
from lightning_modules.components.sparse.stage_groups import StageGroup

NETS: dict[str, type[nn.Module]] = {
    cls.__name__: cls for cls in (LeNet5, LeNet5Caffe, VGG16BN, ResNet18)
}


def _set(module: nn.Module, name: str, value: torch.Tensor | None) -> None:
    if value is not None:
        setattr(module, name, nn.Parameter(value.detach().clone()))


@torch.no_grad()
def _slice_producer(
    model: nn.Module, producer_name: str, bn_name: str | None, keep: torch.Tensor
) -> None:
    producer = model.get_submodule(producer_name)
    _set(producer, "weight", producer.weight[keep])
    if producer.bias is not None:
        _set(producer, "bias", producer.bias[keep])
    if isinstance(producer, nn.Conv2d):
        producer.out_channels = keep.numel()
    else:
        producer.out_features = keep.numel()
    if bn_name is not None:
        bn = model.get_submodule(bn_name)
        _set(bn, "weight", bn.weight[keep] if bn.weight is not None else None)
        _set(bn, "bias", bn.bias[keep] if bn.bias is not None else None)
        if bn.running_mean is not None:
            bn.running_mean = bn.running_mean[keep].clone()
            bn.running_var = bn.running_var[keep].clone()
        bn.num_features = keep.numel()


@torch.no_grad()
def _set_consumer(
    model: nn.Module,
    consumer_name: str,
    bn_name: str | None,
    flatten_group_size: int,
    keep: torch.Tensor,
    weight: torch.Tensor | None,
    intercept: torch.Tensor | None,
) -> None:
    consumer = model.get_submodule(consumer_name)
    if isinstance(consumer, nn.Conv2d):
        new_shape = (consumer.out_channels, keep.numel(), *consumer.kernel_size)
        new = consumer.weight[:, keep] if weight is None else weight.reshape(new_shape)
        consumer.in_channels = keep.numel()
    else:
        cols = kept_columns(keep, flatten_group_size)
        new = consumer.weight[:, cols] if weight is None else weight.reshape(-1, cols.numel())
        consumer.in_features = cols.numel()
    _set(consumer, "weight", new.to(consumer.weight))
    if intercept is None:
        return
    intercept = intercept.to(consumer.weight)
    if consumer.bias is not None:
        _set(consumer, "bias", intercept)
    elif bn_name is not None:
        # BN(z + b' − μ) = BN with running_mean μ − b': the bias-free conv's intercept folds in.
        bn = model.get_submodule(bn_name)
        bn.running_mean -= intercept.to(bn.running_mean)
    else:
        raise ValueError(f"{consumer_name} has neither a bias nor a following BN for its intercept")


def remove_channels(
    model: nn.Module,
    pair: PrunablePair,
    keep: torch.Tensor,
    weight: torch.Tensor | None = None,
    intercept: torch.Tensor | None = None,
) -> None:
    """Keep only channels ``keep`` of ``pair`` in place.

    Args:
        keep: (|K|,) sorted indices of the producer's output channels to keep (≥ 1).
        weight: refit consumer weights, (C_out, |K|·g) or the consumer's new weight shape;
            None keeps the consumer's original columns.
        intercept: (C_out,) refit intercept b': becomes the consumer's bias, or is folded into
            the consumer's BN (running_mean ← running_mean − b') when the consumer has no bias.
    """
    keep = _checked_keep(model, pair.producer, keep)
    _slice_producer(model, pair.producer, pair.producer_bn, keep)
    _set_consumer(
        model, pair.consumer, pair.consumer_bn, pair.flatten_group_size, keep, weight, intercept
    )


def _checked_keep(model: nn.Module, producer: str, keep) -> torch.Tensor:
    """``keep`` as sorted int64 on the producer's device, after checking it is a valid subset."""
    n_out = model.get_submodule(producer).weight.shape[0]
    keep = torch.as_tensor(keep, dtype=torch.long).flatten()
    if keep.numel() == 0:
        raise ValueError(f"{producer}: refusing to remove every channel")
    if int(keep.min()) < 0 or int(keep.max()) >= n_out or keep.unique().numel() != keep.numel():
        raise ValueError(f"{producer}: keep must hold distinct indices in [0, {n_out})")
    return torch.sort(keep).values.to(model.get_submodule(producer).weight.device)


def remove_group_channels(
    model: nn.Module,
    group: StageGroup,
    keep: torch.Tensor,
    weights: Sequence[torch.Tensor | None] | None = None,
    intercepts: Sequence[torch.Tensor | None] | None = None,
) -> None:
    """Keep only stream channels ``keep`` of a residual stage group, in place.

    Every producer loses the other filters (and BN slices); every consumer keeps the input
    channels ``keep`` or takes its refit weights (C_out, |K|·k·k) and intercept from the lists
    (one entry per consumer, in ``group.consumers`` order).
    """
    keep = _checked_keep(model, group.producers[0][0], keep)
    n = len(group.consumers)
    weights = [None] * n if weights is None else list(weights)
    intercepts = [None] * n if intercepts is None else list(intercepts)
    for conv, bn in group.producers:
        _slice_producer(model, conv, bn, keep)
    for consumer, weight, intercept in zip(group.consumers, weights, intercepts, strict=True):
        _set_consumer(model, consumer.layer, consumer.bn, 1, keep, weight, intercept)


def widths_of(model: nn.Module) -> list[int] | list[int | str]:
    """Constructor widths: LeNet ``widths``, VGG ``plan`` (with "M"), ResNet ``internal_widths``.

    A ResNet whose residual-stream widths were pruned (``resnet_stage=joint``) appends its 4
    stage widths to the 8 internal ones.
    """
    if isinstance(model, LeNet5 | LeNet5Caffe):
        layers = [*model.features, *model.classifier]
        lin_conv = [m for m in layers if isinstance(m, nn.Conv2d | nn.Linear)]
        return [m.weight.shape[0] for m in lin_conv[:-1]]
    if isinstance(model, VGG16BN):
        return [
            "M" if isinstance(m, nn.MaxPool2d) else m.out_channels
            for m in model.features
            if isinstance(m, nn.MaxPool2d | nn.Conv2d)
        ]
    if isinstance(model, ResNet18):
        internal = [block.conv1.out_channels for block in model.blocks]
        stages = [block.conv2.out_channels for block in model.blocks[::BLOCKS_PER_STAGE]]
        return internal if tuple(stages) == STAGE_WIDTHS else internal + stages
    raise TypeError(f"widths_of: unsupported network {type(model).__name__}")


def _io_sizes(model: nn.Module) -> tuple[int, int]:
    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    return layers[0].weight.shape[1], layers[-1].weight.shape[0]


def build_pruned(
    net: nn.Module | str,
    widths: Sequence[int | str],
    in_channels: int | None = None,
    num_classes: int | None = None,
) -> nn.Module:
    """A fresh network of ``net``'s class (instance or class name) with the given widths.

    Image channels and classes come from the instance, or the constructor defaults for a name,
    unless given. Load a pruned state_dict into the result to restore a slim checkpoint.
    """
    name = net if isinstance(net, str) else type(net).__name__
    if name not in NETS:
        raise TypeError(f"build_pruned: unknown network {name!r}; known: {sorted(NETS)}")
    kwargs: dict[str, int] = {}
    if isinstance(net, nn.Module):
        kwargs["in_channels"], kwargs["num_classes"] = _io_sizes(net)
    if in_channels is not None:
        kwargs["in_channels"] = in_channels
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    widths = list(widths)
    if name == "ResNet18":
        n_blocks = len(STAGE_WIDTHS) * BLOCKS_PER_STAGE
        if len(widths) not in (n_blocks, n_blocks + len(STAGE_WIDTHS)):
            raise ValueError(
                f"ResNet18 widths: {n_blocks} internal widths, optionally followed by "
                f"{len(STAGE_WIDTHS)} stage widths; got {len(widths)}"
            )
        stages = widths[n_blocks:] or None
        return ResNet18(internal_widths=widths[:n_blocks], stage_widths=stages, **kwargs)
    key = {"VGG16BN": "plan"}.get(name, "widths")
    return NETS[name](**{key: widths}, **kwargs)
