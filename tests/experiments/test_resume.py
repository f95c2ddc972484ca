"""Exact resume: 2N uninterrupted steps == N steps, interrupt, resume from last.ckpt, N steps."""

from pathlib import Path

import pytest
import torch
from helpers import Crash, CrashAfterStep, compose_config, with_extra_callback

from callbacks.run_metadata import WANDB_ID_FILE, read_wandb_run_id
from experiments.train import train

N = 12  # digits: 17 steps per epoch at batch 64, so N is mid-epoch and 2N crosses an epoch


def _overrides(out: Path) -> list[str]:
    return [
        "trainer=deterministic",
        f"trainer.max_steps={2 * N}",
        "trainer.max_epochs=-1",
        f"callbacks.periodic_checkpoint.every_n_train_steps={N}",
        "data.crop_pad=2",  # exercise the seeded augmentation too
        "data.hflip=true",
        "model.warmup_steps=5",
        "test=false",
    ]


def _final(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


def test_resume_is_bit_exact(tmp_path: Path, monkeypatch) -> None:
    full_cfg = compose_config("train", _overrides(tmp_path), tmp_path / "full")
    train(full_cfg)

    first_cfg = compose_config("train", _overrides(tmp_path), tmp_path / "first", logger="wandb")
    monkeypatch.setattr(
        "experiments.train.instantiate_callbacks", with_extra_callback(CrashAfterStep(N))
    )
    with pytest.raises(Crash):
        train(first_cfg)
    assert _final(tmp_path / "first")["global_step"] == N
    monkeypatch.undo()

    resumed_cfg = compose_config(
        "train", [*_overrides(tmp_path), f"resume_dir={tmp_path / 'first'}"],
        tmp_path / "resumed", logger="wandb",
    )  # fmt: skip
    train(resumed_cfg)

    full, resumed = _final(tmp_path / "full"), _final(tmp_path / "resumed")
    assert full["global_step"] == resumed["global_step"] == 2 * N
    for key, value in full["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    full_opt, resumed_opt = full["optimizer_states"][0], resumed["optimizer_states"][0]
    assert full_opt["param_groups"][0]["lr"] == resumed_opt["param_groups"][0]["lr"]
    for pid, state in full_opt["state"].items():
        for name, tensor in state.items():
            assert torch.equal(tensor, resumed_opt["state"][pid][name]), (pid, name)
    assert full["lr_schedulers"] == resumed["lr_schedulers"]
    # the resumed run continues the same W&B run
    first_id = read_wandb_run_id(tmp_path / "first" / "checkpoints")
    assert (
        first_id
        and (tmp_path / "resumed" / "checkpoints" / WANDB_ID_FILE).read_text().strip() == first_id
    )
