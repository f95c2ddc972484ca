"""ResNet-18 stage channels pruned jointly (spec §3, decision 12: ``prune.resnet_stage=joint``)."""

import copy

import pytest
import torch
from helpers import randomise_bn
from torch import nn

from lightning_modules.components.cnn import ResNet18
from lightning_modules.components.sparse import PruneConfig, build_pruned, widths_of
from lightning_modules.components.sparse.channel_surgery import remove_group_channels
from lightning_modules.components.sparse.counting import count_params
from lightning_modules.components.sparse.entropic_solver import solve_group
from lightning_modules.components.sparse.layer_stats import stats_from_rows
from lightning_modules.components.sparse.pipeline import entropic_sparsify
from lightning_modules.components.sparse.stage_groups import resnet_stage_groups

SMALL = {"internal_widths": [6] * 8, "stage_widths": [8, 10, 12, 14]}


def test_stage_groups_name_every_writer_and_reader():
    groups = resnet_stage_groups(ResNet18())
    assert [g.name for g in groups] == ["stage0", "stage1", "stage2", "stage3"]
    assert [p[0] for p in groups[0].producers] == ["conv1", "blocks.0.conv2", "blocks.1.conv2"]
    assert [c.layer for c in groups[0].consumers] == [
        "blocks.0.conv1", "blocks.1.conv1", "blocks.2.conv1", "blocks.2.shortcut.0",
    ]  # fmt: skip
    assert [p[0] for p in groups[1].producers] == [
        "blocks.2.shortcut.0", "blocks.2.conv2", "blocks.3.conv2",
    ]  # fmt: skip
    assert [c.layer for c in groups[3].consumers] == ["blocks.7.conv1", "linear"]


def _mask_stream(model: nn.Module, group, keep: torch.Tensor) -> nn.Module:
    """Zero γ and β of every producer BN outside ``keep``: those stream channels are then 0."""
    masked = copy.deepcopy(model)
    drop = torch.ones(masked.get_submodule(group.producers[0][1]).num_features, dtype=torch.bool)
    drop[keep] = False
    with torch.no_grad():
        for _, bn in group.producers:
            masked.get_submodule(bn).weight[drop] = 0.0
            masked.get_submodule(bn).bias[drop] = 0.0
    return masked


@pytest.mark.parametrize("stage", [0, 1, 3])
def test_removing_a_stage_group_equals_zeroing_its_stream_channels(stage):
    torch.manual_seed(0)
    model = randomise_bn(ResNet18(**SMALL).double(), seed=1)
    group = resnet_stage_groups(model)[stage]
    keep = torch.tensor([0, 3, 5])
    masked = _mask_stream(model, group, keep)
    pruned = copy.deepcopy(model)
    remove_group_channels(pruned, group, keep)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        ref, out = masked(x), pruned(x)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    assert widths_of(pruned)[8 + stage] == 3


def test_joint_selection_keeps_the_union_of_what_the_consumers_need():
    """Consumer A reads channels {0, 1}, consumer B {4, 6}: one shared w must keep all four."""
    gen = torch.Generator().manual_seed(0)
    n_ch, group = 8, 4
    x_a = torch.randn(3000, n_ch * group, generator=gen, dtype=torch.float64)
    x_b = torch.randn(3000, n_ch, generator=gen, dtype=torch.float64)  # a 1x1 consumer
    b_a = torch.zeros(3, n_ch, group, dtype=torch.float64)
    b_a[:, [0, 1]] = torch.randn(3, 2, group, generator=gen, dtype=torch.float64)
    b_b = torch.zeros(2, n_ch, dtype=torch.float64)
    b_b[:, [4, 6]] = torch.randn(2, 2, generator=gen, dtype=torch.float64)
    stats = [
        stats_from_rows(x_a, x_a @ b_a.reshape(3, -1).T, group),
        stats_from_rows(x_b, x_b @ b_b.T, 1),
    ]
    res = solve_group(stats, PruneConfig(rho=1.0, eps_entropy=1e-3))
    assert res.kept.tolist() == [0, 1, 4, 6]
    assert [w.shape for w in res.weights] == [(3, 4 * group), (2, 4)]
    assert all(a >= b - 1e-12 for a, b in zip(res.history, res.history[1:], strict=False))
    # Each refit reproduces its own consumer's targets (noise-free) from the kept channels.
    torch.testing.assert_close(res.weights[1], b_b[:, [0, 1, 4, 6]], atol=1e-4, rtol=0)


def test_joint_pipeline_shrinks_the_residual_stream_and_rebuilds_exactly():
    torch.manual_seed(0)
    model = randomise_bn(ResNet18(**SMALL), seed=2)
    calib = torch.randn(48, 3, 32, 32)
    cfg = PruneConfig(resnet_stage="joint", rho=3.0, max_iter=30, restarts=1)
    pruned, report = entropic_sparsify(model, calib, cfg)
    assert [r.producer for r in report if r.producer.startswith("stage")] == [
        "stage0", "stage1", "stage2", "stage3",
    ]  # fmt: skip
    widths = widths_of(pruned)
    assert len(widths) == 12 and widths[8:] < SMALL["stage_widths"]
    rebuilt = build_pruned(pruned, widths).eval()
    rebuilt.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(calib[:4]), pruned(calib[:4]), rtol=0, atol=0)
    with torch.device("meta"):
        assert count_params(build_pruned("ResNet18", widths)) == count_params(pruned)


@pytest.mark.parametrize("flags", [{"selector": "l1_norm"}, {"mode": "budget", "keep_frac": 0.5}])
def test_joint_outside_entropic_auto_mode_is_refused(flags):
    with pytest.raises(ValueError, match="resnet_stage=joint"):
        PruneConfig(resnet_stage="joint", **flags)
