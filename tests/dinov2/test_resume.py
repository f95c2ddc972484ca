"""Exact DINOv2 resume: 2N uninterrupted steps == N steps, crash, resume from last.ckpt, N steps.

Covers what a DINOv2 checkpoint must carry: student and EMA teacher with both heads, both
centers, AdamW moments, the step-indexed schedules, the data position (mid-epoch), the block
masks and drop-path (a function of the step).
"""

from pathlib import Path

import pytest
import torch
from helpers import Crash, CrashAfterStep, compose_config, with_extra_callback

from experiments.train import train

N = 3  # 40 images at batch 8: 5 steps per epoch, so N is mid-epoch and 2N crosses an epoch


def _overrides(tiny, drop_path_mode: str = "per_sample") -> list[str]:
    return [
        *tiny,
        "data.subset=40",
        "trainer=deterministic",
        f"trainer.max_steps={2 * N}",
        "trainer.max_epochs=-1",
        f"callbacks.periodic_checkpoint.every_n_train_steps={N}",
        "model.backbone.drop_path=0.2",  # random per step: must be reproduced after resume
        f"model.backbone.drop_path_mode={drop_path_mode}",
        "model.ibot.separate_head=true",
        "model.optim.warmup=2",
        "model.optim.freeze_last_layer=1",
        "model.teacher.temp_warmup=4",
    ]


def _last(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


BF16_EXPLICIT = ["trainer.precision=bf16-mixed", "model.backbone.fused_attention=false"]


@pytest.mark.parametrize(
    ("drop_path_mode", "extra"),
    [("per_sample", []), ("batch_subset", []), ("batch_subset", BF16_EXPLICIT)],
    ids=["per_sample", "batch_subset", "batch_subset-bf16-explicit"],
)
def test_resume_is_bit_exact(
    tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, drop_path_mode: str, extra: list[str]
) -> None:
    overrides = [*_overrides(tiny, drop_path_mode), *extra]
    train(compose_config("train", overrides, tmp_path / "full"))

    monkeypatch.setattr(
        "experiments.train.instantiate_callbacks", with_extra_callback(CrashAfterStep(N))
    )
    with pytest.raises(Crash):
        train(compose_config("train", overrides, tmp_path / "first"))
    assert _last(tmp_path / "first")["global_step"] == N
    monkeypatch.undo()
    resumed_overrides = [*overrides, f"resume_dir={tmp_path / 'first'}"]
    train(compose_config("train", resumed_overrides, tmp_path / "resumed"))

    full, resumed = _last(tmp_path / "full"), _last(tmp_path / "resumed")
    assert full["global_step"] == resumed["global_step"] == 2 * N
    state = full["state_dict"]
    assert {"dino_targets.center", "ibot_targets.center"} <= set(state)
    assert any(k.startswith("teacher.ibot_head.") for k in state)
    for key, value in state.items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    full_opt, resumed_opt = full["optimizer_states"][0], resumed["optimizer_states"][0]
    for g_full, g_resumed in zip(
        full_opt["param_groups"], resumed_opt["param_groups"], strict=True
    ):
        assert (g_full["lr"], g_full["weight_decay"]) == (
            g_resumed["lr"],
            g_resumed["weight_decay"],
        )
    for pid, tensors in full_opt["state"].items():
        for name, tensor in tensors.items():
            assert torch.equal(tensor, resumed_opt["state"][pid][name]), (pid, name)
    # the EMA moved the teacher away from the student, and the centers are in use
    s, t = state["student.backbone.vit.cls_token"], state["teacher.backbone.vit.cls_token"]
    assert not torch.equal(s, t)
    assert state["dino_targets.center"].abs().sum() > 0
