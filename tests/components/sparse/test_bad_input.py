"""Bad configuration and bad calibration data raise clear errors."""

import pytest
import torch

from lightning_modules.components.cnn import VGG16BN, LeNet5
from lightning_modules.components.sparse.baselines import global_magnitude_prune
from lightning_modules.components.sparse.budget import keep_frac_for_param_sparsity
from lightning_modules.components.sparse.pipeline import entropic_sparsify
from lightning_modules.components.sparse.prunable_pairs import prunable_pairs
from lightning_modules.components.sparse.prune_config import PruneConfig


@pytest.mark.parametrize("keep_frac", [-0.1, 0.0, 1.5])
def test_keep_frac_outside_range(keep_frac):
    with pytest.raises(ValueError, match="keep_frac"):
        PruneConfig(mode="budget", keep_frac=keep_frac)


@pytest.mark.parametrize("target", [-0.1, 1.0, 2.0])
def test_target_sparsity_outside_range(target):
    with pytest.raises(ValueError, match="target_param_sparsity"):
        PruneConfig(mode="budget", target_param_sparsity=target)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        keep_frac_for_param_sparsity(LeNet5(), target, PruneConfig())
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        global_magnitude_prune(LeNet5(), target)


def test_boxes_other_than_one():
    with pytest.raises(ValueError, match="boxes=3: only one box"):
        PruneConfig(boxes=3)


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        ({"entropy_sign": 0}, "entropy_sign"),
        ({"entropy_sign": -1, "w_solver": "newton"}, "newton"),
        ({"keep_rule": "top"}, "keep_rule"),
        ({"refit": "ols"}, "refit"),
        ({"min_channels": 0}, "min_channels"),
        ({"rho": -1.0}, "rho"),
        ({"mode": "budget"}, "exactly one"),
        ({"mode": "budget", "keep_frac": 0.5, "target_param_sparsity": 0.5}, "exactly one"),
    ],
)
def test_invalid_flags(flags, match):
    with pytest.raises(ValueError, match=match):
        PruneConfig(**flags)


def test_calibration_tensor_of_wrong_shape_names_expected_and_got():
    with pytest.raises(ValueError, match=r"\(N, 1, 28, 28\); got \(4, 3, 28, 28\)"):
        entropic_sparsify(LeNet5(), torch.randn(4, 3, 28, 28))
    with pytest.raises(ValueError, match=r"\(N, 3, 32, 32\); got \(3, 32, 32\)"):
        entropic_sparsify(VGG16BN(), torch.randn(3, 32, 32))


def test_unreachable_target_and_bad_widths():
    with pytest.raises(ValueError, match="unreachable"):
        keep_frac_for_param_sparsity(LeNet5(), 0.999, PruneConfig(min_keep_frac=0.5))
    images = torch.randn(8, 1, 28, 28)
    with pytest.raises(ValueError, match="needs per-layer widths"):
        entropic_sparsify(LeNet5(), images, selector="l1_norm")
    with pytest.raises(ValueError, match="4 layers"):
        entropic_sparsify(LeNet5(), images, selector="random", widths_from=[3, 3])
    with pytest.raises(ValueError, match="outside"):
        entropic_sparsify(LeNet5(), images, selector="random", widths_from=[7, 3, 3, 3])


def test_unsupported_network():
    with pytest.raises(TypeError, match="supported"):
        prunable_pairs(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3)))
