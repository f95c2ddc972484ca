"""Spec §6.4: the physically pruned network equals the consumer-masked network.

The reference masks the *consumer's* input columns of dropped channels and leaves the producer
untouched: with BN after the producer, a zeroed filter would still emit ReLU(β − γ·μ/√(σ²+eps)).
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import randomise_bn
from torch import nn

from lightning_modules.components.cnn import VGG16BN, LeNet5, LeNet5Caffe, ResNet18
from lightning_modules.components.sparse.channel_surgery import remove_channels
from lightning_modules.components.sparse.prunable_pairs import prunable_pairs
from lightning_modules.components.sparse.refit import kept_columns


def random_keep(n: int, gen: torch.Generator) -> torch.Tensor:
    size = int(torch.randint(1, n, (1,), generator=gen)) if n > 1 else 1
    return torch.sort(torch.randperm(n, generator=gen)[:size]).values


def mask_consumers(model: nn.Module, keeps: list[torch.Tensor]) -> nn.Module:
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for pair, keep in zip(prunable_pairs(masked), keeps, strict=True):
            consumer = masked.get_submodule(pair.consumer)
            n_in = consumer.weight.shape[1]
            group = pair.flatten_group_size if isinstance(consumer, nn.Linear) else 1
            cols = torch.ones(n_in, dtype=torch.bool)
            cols[kept_columns(keep, group)] = False
            consumer.weight[:, cols] = 0.0
    return masked


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        (LeNet5, (1, 28, 28)),
        (LeNet5Caffe, (1, 28, 28)),
        (VGG16BN, (3, 32, 32)),
        (ResNet18, (3, 32, 32)),
    ],
)
def test_pruned_equals_consumer_masked(make, shape):
    torch.manual_seed(0)
    model = randomise_bn(make().double(), seed=1)
    gen = torch.Generator().manual_seed(2)
    pairs = prunable_pairs(model)
    keeps = [random_keep(model.get_submodule(p.producer).weight.shape[0], gen) for p in pairs]
    masked = mask_consumers(model, keeps)
    pruned = copy.deepcopy(model)
    for pair, keep in zip(pairs, keeps, strict=True):
        remove_channels(pruned, pair, keep)
    x = torch.randn(2, *shape, dtype=torch.float64)
    with torch.no_grad():
        ref, out = masked(x), pruned(x)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def test_intercept_folds_into_the_consumer_bn_of_a_bias_free_conv():
    """ResNet conv2 has no bias: b' must end up in bn2.running_mean (μ ← μ − b')."""
    torch.manual_seed(0)
    model = randomise_bn(ResNet18().double(), seed=3)
    pair = prunable_pairs(model)[0]
    block = copy.deepcopy(model.blocks[0])
    keep = torch.tensor([0, 5, 9, 33])
    weight = torch.randn(64, 4 * 9, dtype=torch.float64)
    intercept = torch.randn(64, dtype=torch.float64)
    x = torch.randn(2, 64, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        h = F.relu(block.bn1(block.conv1(x)))[:, keep]
        z = F.conv2d(h, weight.reshape(64, 4, 3, 3), padding=1) + intercept[:, None, None]
        ref = F.relu(block.bn2(z) + block.shortcut(x))
        remove_channels(model, pair, keep, weight, intercept)
        out = model.blocks[0](x)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    assert model.blocks[0].conv2.bias is None
