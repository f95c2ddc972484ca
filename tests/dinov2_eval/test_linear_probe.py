"""Linear-probe grid (spec §9): inputs, init, lr scaling, best-on-validation selection."""

import pytest
import torch
import torch.nn.functional as F

from lightning_modules.components.linear_probe import (
    LINEAR_PROBE_LRS,
    LinearClassifierBank,
    ProbeConfig,
    extract_pooled_features,
    linear_input,
    pooled_block_features,
    probe_grid,
    run_linear_probe,
    train_classifier_bank,
)
from lightning_modules.components.vit import DINOv2Backbone


def reference_linear_input(x_tokens_list, use_n_blocks, use_avgpool):
    """``create_linear_input`` of dinov2/eval/linear.py."""
    intermediate_output = x_tokens_list[-use_n_blocks:]
    output = torch.cat([class_token for _, class_token in intermediate_output], dim=-1)
    if use_avgpool:
        output = torch.cat((output, torch.mean(intermediate_output[-1][0], dim=1)), dim=-1)
    return output.float()


def test_inputs_match_the_reference_on_a_real_backbone() -> None:
    torch.manual_seed(0)
    backbone = DINOv2Backbone(None, img_size=16, patch_size=4, embed_dim=16, depth=4, num_heads=2)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        intermediate = backbone.get_intermediate_layers(x, n=4)
    pooled = pooled_block_features(intermediate)
    assert pooled.shape == (3, 5, 16)
    torch.testing.assert_close(extract_pooled_features(backbone.eval(), x.split(2), 4), pooled)
    for n in (1, 2, 4):
        for avgpool in (False, True):
            ours = linear_input(pooled, n, avgpool)
            assert ours.shape == (3, 16 * (n + avgpool))
            torch.testing.assert_close(ours, reference_linear_input(intermediate, n, avgpool))
    with pytest.raises(ValueError, match="n_last_blocks"):
        linear_input(pooled, 5, False)


def test_grid_and_init() -> None:
    grid = probe_grid()
    assert len(grid) == 2 * 2 * 13 and len(LINEAR_PROBE_LRS) == 13
    assert grid[0] == ProbeConfig(1, False, 1e-5) and grid[0].name == "blocks1_avgpool0_lr1e-05"
    bank = LinearClassifierBank(64, 10, grid, torch.Generator().manual_seed(0))
    weights = torch.cat([w.flatten() for w in bank.weights])
    assert weights.std().item() == pytest.approx(0.01, rel=0.05)
    assert all(b.abs().max() == 0 for b in bank.biases)
    weight, bias = bank.linear("blocks4_avgpool1_lr0.1")
    assert weight.shape == (10, 5 * 64) and bias.shape == (10,)
    x = torch.randn(3, 5, 64)
    torch.testing.assert_close(
        bank(x)["blocks4_avgpool1_lr0.1"], linear_input(x, 4, True) @ weight.T + bias
    )


def test_first_step_is_sgd_with_scaled_lr() -> None:
    gen = torch.Generator().manual_seed(0)
    feats, labels = torch.randn(64, 5, 8, generator=gen), torch.randint(0, 3, (64,), generator=gen)
    configs = [ProbeConfig(4, True, lr=0.1), ProbeConfig(4, True, lr=0.02)]
    bank = LinearClassifierBank(8, 3, configs, torch.Generator().manual_seed(1))
    weight, bias = bank.linear(configs[0].name)
    w0, b0 = weight.detach().clone(), bias.detach().clone()
    x = linear_input(feats, 4, True)
    w, b = w0.clone().requires_grad_(), b0.clone().requires_grad_()
    F.cross_entropy(x @ w.T + b, labels).backward()
    train_classifier_bank(bank, feats, labels, steps=1, batch_size=64, generator=gen)
    lr_eff = 0.1 * 64 / 256  # the whole set in one batch: batch order does not matter
    torch.testing.assert_close(weight.detach(), w0 - lr_eff * w.grad)
    torch.testing.assert_close(bias.detach(), b0 - lr_eff * b.grad)


def planted(n: int, slot: int, seed: int, dim: int = 8, num_classes: int = 4, signal: float = 4):
    """Compact features (n, 5, dim): noise everywhere, class signal only in ``slot``."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (n,), generator=gen)
    feats = torch.randn(n, 5, dim, generator=gen)
    feats[:, slot, :num_classes] += signal * F.one_hot(labels, num_classes)
    return feats, labels


@pytest.mark.parametrize(
    ("slot", "n_last_blocks", "avgpool"), [(4, None, True), (0, 4, None)]
)  # slot 4: the mean patch token (avgpool only); slot 0: the 4th-last CLS (4 blocks only)
def test_best_validation_classifier_is_selected(slot, n_last_blocks, avgpool) -> None:
    configs = probe_grid((1, 4), (False, True), (1e-6, 0.5))
    result = run_linear_probe(
        planted(512, slot, 0), planted(256, slot, 1), planted(256, slot, 2),
        configs=configs, steps=150, batch_size=64,
    )  # fmt: skip
    assert result.best.lr == 0.5
    if avgpool is not None:
        assert result.best.avgpool is avgpool
    if n_last_blocks is not None:
        assert result.best.n_last_blocks == n_last_blocks
    assert result.val_top1 == max(result.all_val_top1.values()) > 0.95
    assert result.test_top1 > 0.95
    blind = [
        c.name
        for c in configs
        if c.lr == 0.5 and not (c.avgpool if slot == 4 else c.n_last_blocks == 4)
    ]
    assert max(result.all_val_top1[n] for n in blind) < 0.5  # no signal in their inputs


def test_selection_uses_validation_not_test() -> None:
    train, val = planted(256, 3, 0), planted(128, 3, 1)
    flipped = (val[0], (val[1] + 1) % 4)  # a "test" set that no good classifier gets right
    result = run_linear_probe(train, val, flipped, configs=probe_grid(lrs=(0.5,)), steps=100)
    assert result.val_top1 > 0.95 and result.test_top1 < 0.1


def test_separable_features_reach_full_accuracy_deterministically() -> None:
    train, val, test = (
        planted(n, 3, seed, signal=10) for n, seed in ((512, 0), (256, 1), (256, 2))
    )
    before = torch.get_rng_state()
    a = run_linear_probe(train, val, test, steps=100, batch_size=64, seed=5)
    b = run_linear_probe(train, val, test, steps=100, batch_size=64, seed=5)
    assert torch.equal(torch.get_rng_state(), before)
    assert a.test_top1 == 1.0
    assert a.all_val_top1 == b.all_val_top1 and a.best == b.best


def test_a_diverging_lr_neither_wins_nor_disturbs_the_others() -> None:
    train, val = planted(256, 3, 0), planted(128, 3, 1)
    configs = [ProbeConfig(4, True, 1e39), ProbeConfig(4, True, 0.5)]  # 1e39: inf in float32
    result = run_linear_probe(train, val, configs=configs, steps=60, batch_size=64)
    assert result.best.lr == 0.5 and result.val_top1 > 0.95
    assert result.all_val_top1[configs[0].name] < 0.5
