"""PruningScheduleCallback: the cubic schedule, masks as buffers, exact resume mid-schedule."""

from pathlib import Path

import pytest
import torch
from helpers import Crash, CrashAfterStep, compose_config, with_extra_callback

from callbacks.channel_selectors import EntropicChannelSelector
from callbacks.pruning_schedule import (
    MASK_NAME,
    SELECTORS,
    PruningScheduleCallback,
    apply_channel_mask,
    cubic_sparsity,
)
from experiments.train import train
from lightning_modules.components.cnn import LeNet5
from lightning_modules.components.sparse.prunable_pairs import prunable_pairs
from lightning_modules.components.sparse.prune_config import PruneConfig

N = 12


def test_cubic_schedule_endpoints() -> None:
    assert cubic_sparsity(0, 0.8, start=0, end=100) == 0.0
    assert cubic_sparsity(100, 0.8, start=0, end=100) == pytest.approx(0.8)
    assert cubic_sparsity(500, 0.8, start=0, end=100) == pytest.approx(0.8)
    assert cubic_sparsity(50, 0.8, start=0, end=100) == pytest.approx(0.8 * (1 - 0.5**3))
    values = [cubic_sparsity(t, 0.8, 10, 90) for t in range(0, 100)]
    assert values == sorted(values)  # never decreasing


def test_bad_schedule_values() -> None:
    with pytest.raises(ValueError, match="final_sparsity"):
        PruningScheduleCallback(final_sparsity=1.0)
    with pytest.raises(ValueError, match="start_step"):
        PruningScheduleCallback(final_sparsity=0.5, start_step=10, end_step=5)


@pytest.mark.parametrize("name", ["l1_norm", "random", "entropic"])
def test_selectors_keep_count_among_alive_channels(name: str) -> None:
    torch.manual_seed(0)
    net = LeNet5().eval()
    pair = prunable_pairs(net)[1]  # conv2 (16 filters) → fc1
    fc1 = net.get_submodule(pair.consumer)
    fc1.register_buffer(MASK_NAME, torch.ones(16))
    fc1.register_forward_pre_hook(apply_channel_mask)
    fc1.get_buffer(MASK_NAME)[:4] = 0  # channels 0-3 already removed
    selector = (
        EntropicChannelSelector(torch.randn(32, 1, 28, 28), PruneConfig(restarts=1))
        if name == "entropic"
        else SELECTORS[name]
    )
    kept = selector(net, pair, 6, step=3)
    assert kept.numel() == 6 and torch.all(kept >= 4)
    assert torch.equal(kept, torch.sort(kept).values)
    assert net.training is False


def _overrides() -> list[str]:
    return [
        "trainer=deterministic",
        f"trainer.max_steps={2 * N}",
        "trainer.max_epochs=-1",
        "callbacks=pruning",
        f"callbacks.periodic_checkpoint.every_n_train_steps={N}",
        "callbacks.pruning_schedule.final_sparsity=0.75",
        f"callbacks.pruning_schedule.end_step={2 * N - 4}",
        "callbacks.pruning_schedule.frequency=4",
        "callbacks.pruning_schedule.selector=entropic",
        "callbacks.pruning_schedule.calibration_images=64",
        "callbacks.pruning_schedule.prune={restarts: 1, max_iter: 30, max_rows: 4000}",
        "test=false",
    ]


def test_masks_are_checkpointed_and_resume_is_exact(tmp_path: Path, monkeypatch) -> None:
    train(compose_config("train", _overrides(), tmp_path / "full"))
    monkeypatch.setattr(
        "experiments.train.instantiate_callbacks", with_extra_callback(CrashAfterStep(N))
    )
    with pytest.raises(Crash):
        train(compose_config("train", _overrides(), tmp_path / "first"))
    monkeypatch.undo()
    mid = torch.load(tmp_path / "first/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    mid_masks = {k: v for k, v in mid.items() if k.endswith(MASK_NAME)}
    assert mid_masks and any(v.sum() < v.numel() for v in mid_masks.values())  # pruning began

    resumed_cfg = compose_config(
        "train", [*_overrides(), f"resume_dir={tmp_path / 'first'}"], tmp_path / "resumed"
    )
    train(resumed_cfg)
    full = torch.load(tmp_path / "full/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    resumed = torch.load(tmp_path / "resumed/checkpoints/last.ckpt", weights_only=True)
    for key, value in full.items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    final_masks = [v for k, v in full.items() if k.endswith(MASK_NAME)]
    for mask in final_masks:  # 75 % of each prunable channel set removed at the end
        assert int(mask.sum()) == max(1, -(-mask.numel() // 4))
    # masks only shrink: every channel removed at step N stays removed
    for key, mask in mid_masks.items():
        assert torch.all(full[key] <= mask)
