"""Physical removal of channels, and rebuilding slim networks from their widths (spec §2.7, R1, R3).

``remove_channels`` keeps filters K of the producer (weight rows, bias), slices its BN (weight,
bias, running_mean, running_var; num_batches_tracked unchanged), keeps the consumer's input
columns of K (or writes refit weights there) and updates the size attributes so ``repr`` and
re-construction agree. ``widths_of`` / ``build_pruned`` give the constructor widths of a pruned
network and rebuild it, so a checkpoint can be loaded without pickled modules.
"""

from collections.abc import Sequence

import torch
from torch import nn

from lightning_modules.components.cnn import VGG16BN, LeNet5, LeNet5Caffe, ResNet18
from lightning_modules.components.sparse.prunable_pairs import PrunablePair
from lightning_modules.components.sparse.refit import kept_columns

NETS: dict[str, type[nn.Module]] = {
    cls.__name__: cls for cls in (LeNet5, LeNet5Caffe, VGG16BN, ResNet18)
}


def _set(module: nn.Module, name: str, value: torch.Tensor | None) -> None:
    if value is not None:
        setattr(module, name, nn.Parameter(value.detach().clone()))


@torch.no_grad()
def _slice_producer(model: nn.Module, pair: PrunablePair, keep: torch.Tensor) -> None:
    producer = model.get_submodule(pair.producer)
    _set(producer, "weight", producer.weight[keep])
    if producer.bias is not None:
        _set(producer, "bias", producer.bias[keep])
    if isinstance(producer, nn.Conv2d):
        producer.out_channels = keep.numel()
    else:
        producer.out_features = keep.numel()
    if pair.producer_bn is not None:
        bn = model.get_submodule(pair.producer_bn)
        _set(bn, "weight", bn.weight[keep] if bn.weight is not None else None)
        _set(bn, "bias", bn.bias[keep] if bn.bias is not None else None)
        if bn.running_mean is not None:
            bn.running_mean = bn.running_mean[keep].clone()
            bn.running_var = bn.running_var[keep].clone()
        bn.num_features = keep.numel()


@torch.no_grad()
def _set_consumer(
    model: nn.Module,
    pair: PrunablePair,
    keep: torch.Tensor,
    weight: torch.Tensor | None,
    intercept: torch.Tensor | None,
) -> None:
    consumer = model.get_submodule(pair.consumer)
    if isinstance(consumer, nn.Conv2d):
        new_shape = (consumer.out_channels, keep.numel(), *consumer.kernel_size)
        new = consumer.weight[:, keep] if weight is None else weight.reshape(new_shape)
        consumer.in_channels = keep.numel()
    else:
        cols = kept_columns(keep, pair.flatten_group_size)
        new = consumer.weight[:, cols] if weight is None else weight.reshape(-1, cols.numel())
        consumer.in_features = cols.numel()
    _set(consumer, "weight", new.to(consumer.weight))
    if intercept is None:
        return
    intercept = intercept.to(consumer.weight)
    if consumer.bias is not None:
        _set(consumer, "bias", intercept)
    elif pair.consumer_bn is not None:
        # BN(z + b' − μ) = BN with running_mean μ − b': the bias-free conv's intercept folds in.
        bn = model.get_submodule(pair.consumer_bn)
        bn.running_mean -= intercept.to(bn.running_mean)
    else:
        raise ValueError(f"{pair.consumer} has neither a bias nor a following BN for its intercept")


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
    n_out = model.get_submodule(pair.producer).weight.shape[0]
    keep = torch.as_tensor(keep, dtype=torch.long).flatten()
    if keep.numel() == 0:
        raise ValueError(f"{pair.producer}: refusing to remove every channel")
    if int(keep.min()) < 0 or int(keep.max()) >= n_out or keep.unique().numel() != keep.numel():
        raise ValueError(f"{pair.producer}: keep must hold distinct indices in [0, {n_out})")
    keep = torch.sort(keep).values.to(model.get_submodule(pair.producer).weight.device)
    _slice_producer(model, pair, keep)
    _set_consumer(model, pair, keep, weight, intercept)


def widths_of(model: nn.Module) -> list[int] | list[int | str]:
    """Constructor widths: LeNet ``widths``, VGG ``plan`` (with "M"), ResNet ``internal_widths``."""
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
        return [block.conv1.out_channels for block in model.blocks]
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
    key = {"VGG16BN": "plan", "ResNet18": "internal_widths"}.get(name, "widths")
    return NETS[name](**{key: list(widths)}, **kwargs)
