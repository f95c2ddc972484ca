"""CNN classifiers: parameter counts of the entropic-sparsification spec §3 and output shapes."""

import pytest
import torch
from torch import nn

from lightning_modules.components.cnn import VGG16BN, LeNet5, LeNet5Caffe, ResNet18


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("model", "size", "expected"),
    [
        (LeNet5(), 28, 61_706),
        (LeNet5Caffe(), 28, 431_080),
        (VGG16BN(), 32, 14_728_266),
        (ResNet18(), 32, 11_173_962),
    ],
)
def test_parameter_counts_and_shapes(model: nn.Module, size: int, expected: int) -> None:
    assert n_params(model) == expected
    channels = model.features[0].in_channels if hasattr(model, "features") else 3
    out = model.eval()(torch.randn(2, channels, size, size))
    assert out.shape == (2, 10)


def test_widths_rebuild_slim_networks() -> None:
    # 6-16-120-84 → 3-8-60-42: conv1 3·25+3, conv2 8·3·25+8, fc 200·60+60, 60·42+42, 42·10+10
    assert n_params(LeNet5(widths=(3, 8, 60, 42))) == 78 + 608 + 12_060 + 2_562 + 430
    slim = ResNet18(internal_widths=[32] * 8)
    assert slim.blocks[0].conv1.out_channels == 32 and slim.blocks[0].conv2.in_channels == 32
    with pytest.raises(ValueError, match="8 internal widths"):
        ResNet18(internal_widths=[32] * 7)
