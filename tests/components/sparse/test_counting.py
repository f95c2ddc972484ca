"""Spec §6.5: params and MACs of the four nets (§3 table), Li et al.'s pruned-A VGG, masks."""

import copy

import pytest
import torch

from lightning_modules.components.cnn import VGG16BN, LeNet5, LeNet5Caffe, ResNet18
from lightning_modules.components.sparse.baselines import (
    global_magnitude_prune,
    make_magnitude_pruning_permanent,
)
from lightning_modules.components.sparse.channel_surgery import remove_channels
from lightning_modules.components.sparse.counting import (
    count_model,
    count_params,
    sparsity_report,
)
from lightning_modules.components.sparse.prunable_pairs import prunable_pairs

# Li et al. 2017 "pruned-A" widths on the 1-FC CIFAR VGG-16 (with the final pool before the FC).
PRUNED_A = [32, 64, "M", 128, 128, "M", 256, 256, 256, "M", 256, 256, 256, "M", 256, 256, 256, "M"]


@pytest.mark.parametrize(
    ("make", "shape", "params", "macs"),
    [
        (LeNet5, (1, 28, 28), 61_706, 416_520),
        (LeNet5Caffe, (1, 28, 28), 431_080, 2_293_000),
        (VGG16BN, (3, 32, 32), 14_728_266, 313_201_664),
        (ResNet18, (3, 32, 32), 11_173_962, 555_422_720),
    ],
)
def test_counts_match_the_spec_table(make, shape, params, macs):
    counts = count_model(make(), shape)
    assert (counts.params, counts.macs, counts.flops) == (params, macs, 2 * macs)


def test_pruned_a_vgg_counts_and_sparsity():
    report = sparsity_report(VGG16BN(plan=PRUNED_A), VGG16BN(), (3, 32, 32))
    assert (report.counts.params, report.counts.macs) == (5_264_522, 206_146_048)
    assert report.param_sparsity == pytest.approx(100 * (1 - 5_264_522 / 14_728_266))
    assert report.flop_sparsity == pytest.approx(100 * (1 - 206_146_048 / 313_201_664))
    dense_channels = 2 * 64 + 2 * 128 + 3 * 256 + 6 * 512
    pruned_channels = 32 + 64 + 2 * 128 + 9 * 256
    assert report.channel_sparsity == pytest.approx(100 * (1 - pruned_channels / dense_channels))


def test_physically_pruned_lenet_counts():
    model = LeNet5()
    pruned = copy.deepcopy(model)
    pair = prunable_pairs(pruned)[0]  # conv1 (6 filters) → conv2
    remove_channels(pruned, pair, torch.tensor([0, 2, 4]))
    counts = count_model(pruned, (1, 28, 28))
    assert counts.params == 61_706 - 3 * (25 + 1) - 16 * 3 * 25
    assert counts.macs == 416_520 - 3 * 25 * 28 * 28 - 16 * 3 * 25 * 10 * 10
    assert counts.channels == 226 - 3


def test_masked_counts_follow_the_masks():
    model = LeNet5()
    removed = global_magnitude_prune(model, 0.5)
    assert removed == round(0.5 * 61_706)
    report = sparsity_report(model, LeNet5(), (1, 28, 28))
    assert report.counts.params == 61_706 - removed
    assert report.param_sparsity == pytest.approx(100 * removed / 61_706)
    assert 0 < report.flop_sparsity < 100
    # Explicit masks (e.g. held by a training callback) count the same way.
    explicit = {"features.0.weight": torch.zeros(6, 1, 5, 5)}
    assert count_params(LeNet5(), explicit) == 61_706 - 150
    # Made permanent, the zeros remain but the masks are gone: a dense count again (no speed-up).
    make_magnitude_pruning_permanent(model)
    assert count_params(model) == 61_706
    assert not any(name.endswith("_mask") for name, _ in model.named_buffers())
