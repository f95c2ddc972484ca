"""Spec §6.6: no empty layer, BN slices hold the kept channels' values, slim checkpoints reload."""

import copy

import pytest
import torch
from helpers import randomise_bn
from torch import nn

from lightning_modules.components.cnn import VGG16BN, LeNet5, ResNet18
from lightning_modules.components.sparse.channel_surgery import (
    build_pruned,
    remove_channels,
    widths_of,
)
from lightning_modules.components.sparse.keep_rules import select_channels
from lightning_modules.components.sparse.pipeline import entropic_sparsify
from lightning_modules.components.sparse.prunable_pairs import prunable_pairs
from lightning_modules.components.sparse.prune_config import PruneConfig

SMALL_VGG = [8, "M", 8, "M", 16, "M", 16, "M", 16, "M"]
FAST = {"restarts": 1, "max_iter": 20}


@pytest.mark.parametrize(
    "cfg",
    [
        PruneConfig(tau=1.0, **FAST),
        PruneConfig(tau=1.0, keep_rule="mass", keep_mass_delta=0.999, **FAST),
        PruneConfig(mode="budget", keep_frac=1e-6, **FAST),
    ],
)
def test_no_layer_ends_empty(cfg):
    torch.manual_seed(0)
    model = LeNet5(widths=(6, 8, 30, 20)).double()
    images = torch.randn(64, 1, 28, 28, dtype=torch.float64)
    pruned, report = entropic_sparsify(model, images, cfg)
    assert all(r.n_kept >= 1 for r in report)
    assert min(widths_of(pruned)) >= 1
    assert pruned(images[:2]).shape == (2, 10)


def test_keep_rules_respect_the_floors():
    peaked = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    assert select_channels(peaked, PruneConfig(tau=1.0)).tolist() == [2]
    assert select_channels(peaked, PruneConfig(tau=1.0, min_channels=3)).numel() == 3
    assert select_channels(peaked, PruneConfig(tau=1.0, min_keep_frac=0.5)).numel() == 4
    budget = PruneConfig(mode="budget", keep_frac=1e-9)
    assert select_channels(peaked, budget).tolist() == [2]
    assert select_channels(peaked, budget, n_keep=0).numel() == 1


def test_producer_bn_holds_the_kept_channels_original_values():
    torch.manual_seed(0)
    model = randomise_bn(VGG16BN(plan=SMALL_VGG).double(), seed=1)
    images = torch.randn(32, 3, 32, 32, dtype=torch.float64)
    cfg = PruneConfig(mode="budget", keep_frac=0.5, **FAST)
    pruned, report = entropic_sparsify(model, images, cfg)
    for pair, layer in zip(prunable_pairs(model), report, strict=True):
        kept = torch.tensor(layer.kept)
        before, after = (
            model.get_submodule(pair.producer_bn),
            pruned.get_submodule(pair.producer_bn),
        )
        assert after.num_features == kept.numel() == layer.n_kept
        for name in ("weight", "bias", "running_mean", "running_var"):
            assert torch.equal(getattr(after, name), getattr(before, name)[kept]), name
        assert torch.equal(after.num_batches_tracked, before.num_batches_tracked)


def _rebuild_and_compare(pruned: nn.Module, shape: tuple[int, ...]) -> None:
    rebuilt = build_pruned(pruned, widths_of(pruned)).double().eval()
    rebuilt.load_state_dict(pruned.state_dict())  # strict: every shape must agree
    by_name = build_pruned(type(pruned).__name__, widths_of(pruned)).double().eval()
    by_name.load_state_dict(pruned.state_dict())
    x = torch.randn(2, *shape, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), pruned.eval()(x))
        assert torch.equal(by_name(x), pruned(x))


def test_slim_checkpoint_reloads_into_rebuilt_vgg_and_lenet():
    torch.manual_seed(0)
    vgg = randomise_bn(VGG16BN(plan=SMALL_VGG).double(), seed=2)
    pruned, _ = entropic_sparsify(vgg, torch.randn(16, 3, 32, 32, dtype=torch.float64),
                                  PruneConfig(**FAST))  # fmt: skip
    _rebuild_and_compare(pruned, (3, 32, 32))
    lenet, _ = entropic_sparsify(LeNet5().double(), torch.randn(16, 1, 28, 28).double(),
                                 PruneConfig(mode="budget", keep_frac=0.5), selector="l1_norm")  # fmt: skip
    assert widths_of(lenet) == [3, 8, 60, 42]
    _rebuild_and_compare(lenet, (1, 28, 28))


def test_slim_checkpoint_reloads_into_rebuilt_resnet():
    torch.manual_seed(0)
    model = randomise_bn(ResNet18().double(), seed=3)
    pruned = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(4)
    for pair in prunable_pairs(pruned):
        n = pruned.get_submodule(pair.producer).out_channels
        remove_channels(pruned, pair, torch.randperm(n, generator=gen)[: n // 4])
    assert widths_of(pruned) == [16, 16, 32, 32, 64, 64, 128, 128]
    _rebuild_and_compare(pruned, (3, 32, 32))
