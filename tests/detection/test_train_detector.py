"""The detector through experiments/train.py: fast_dev_run, exact resume, checkpoints (spec §15
tests 8 and 12), and experiments/detect.py on a trained checkpoint."""

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import Crash, CrashAfterStep, compose_config, with_extra_callback

from experiments.detect import main as detect_main
from experiments.train import train

N = 3  # 8 training images at batch 2: 4 steps per epoch, so N is mid-epoch and 2N crosses one


def test_fast_dev_run(tmp_path: Path, micro_overrides: list[str]) -> None:
    metrics = train(compose_config("train", [*micro_overrides, "debug=fast_dev_run"], tmp_path))
    assert math.isfinite(metrics["train/loss"])
    for term in ("focal", "l1", "giou"):
        for suffix in ("", "_0", "_enc", "_dn", "_dn_0"):
            assert math.isfinite(metrics[f"train/loss_{term}{suffix}"]), term + suffix
    for key in ("val/mAP", "val/mAP_50", "val_unseen/mAP", "val_unseen/mAP_50"):
        assert 0.0 <= metrics[key] <= 1.0, key


class RecordGradNorm(L.Callback):
    """The global gradient norm left after each training step (after clipping)."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))


def test_bf16_mixed_trains_and_clips_with_the_fused_optimizer(
    tmp_path: Path, micro_overrides: list[str], monkeypatch
) -> None:
    """Lightning's AMP plugin refuses to clip with a fused optimizer; bf16 needs no scaler, so the
    module clips itself and the step's gradients end at the 0.1 norm."""
    record = RecordGradNorm()
    monkeypatch.setattr("experiments.train.instantiate_callbacks", with_extra_callback(record))
    overrides = [*micro_overrides, "debug=fast_dev_run", "trainer.precision=bf16-mixed",
                 "+model.optimizer.fused=true", "model.grad_clip=0.1"]  # fmt: skip
    metrics = train(compose_config("train", overrides, tmp_path))
    assert math.isfinite(metrics["train/loss"])
    assert len(record.norms) == 1 and record.norms[0] == pytest.approx(0.1, rel=1e-3)


def _resume_overrides(micro: list[str]) -> list[str]:
    return [
        *micro, "trainer=deterministic", f"trainer.max_steps={2 * N}", "trainer.max_epochs=-1",
        "trainer.val_check_interval=null", "trainer.check_val_every_n_epoch=1",
        "trainer.limit_val_batches=0", "~callbacks.model_checkpoint",
        f"callbacks.periodic_checkpoint.every_n_train_steps={N}", "model.lr_drops=[4]",
    ]  # fmt: skip


def _last(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


@pytest.mark.parametrize("cache_by", ["caption", "block"])
def test_resume_is_bit_exact(tmp_path: Path, micro_overrides: list[str], monkeypatch,
                             cache_by: str) -> None:  # fmt: skip
    # "block": per-phrase text features are cached across captions, so the cache's history
    # differs between the uninterrupted and the resumed run; the result must not.
    overrides = [*_resume_overrides(micro_overrides), f"+model.text_encoder.cache_by={cache_by}"]
    train(compose_config("train", overrides, tmp_path / "full"))
    monkeypatch.setattr(
        "experiments.train.instantiate_callbacks", with_extra_callback(CrashAfterStep(N))
    )
    with pytest.raises(Crash):
        train(compose_config("train", overrides, tmp_path / "first"))
    assert _last(tmp_path / "first")["global_step"] == N
    monkeypatch.undo()
    resumed = [*overrides, f"resume_dir={tmp_path / 'first'}"]
    train(compose_config("train", resumed, tmp_path / "resumed"))

    full, again = _last(tmp_path / "full"), _last(tmp_path / "resumed")
    assert full["global_step"] == again["global_step"] == 2 * N
    assert not any(k.startswith("text_encoder.") for k in full["state_dict"])  # frozen: rebuilt
    assert full["state_dict"].keys() == again["state_dict"].keys()
    for key, value in full["state_dict"].items():
        assert torch.equal(value, again["state_dict"][key]), key
    opt_full, opt_again = full["optimizer_states"][0], again["optimizer_states"][0]
    assert [g["lr"] for g in opt_full["param_groups"]] == [
        g["lr"] for g in opt_again["param_groups"]
    ]
    assert opt_full["param_groups"][1]["lr"] == pytest.approx(
        0.1 * opt_full["param_groups"][0]["lr"]
    )
    for pid, state in opt_full["state"].items():
        for name, tensor in state.items():
            assert torch.equal(tensor, opt_again["state"][pid][name]), (pid, name)
    assert full["lr_schedulers"] == again["lr_schedulers"]

    # the checkpoint serves experiments/detect.py (text encoder rebuilt from the run config)
    image = tmp_path / "full" / "scene.png"
    from torchvision.io import write_png

    from datamodules.components.synthetic_scenes import SyntheticScenes

    write_png(SyntheticScenes(None).render("val_seen", 0).image, str(image))
    out = tmp_path / "det.json"
    detect_main([str(image), "--prompt", "red zero . blue shirt .", "--box-threshold", "0",
                 "--checkpoint", str(tmp_path / "full" / "checkpoints" / "last.ckpt"),
                 "--output-dir", str(tmp_path / "det"), "--output-json", str(out)])  # fmt: skip
    assert out.is_file() and (tmp_path / "det" / "scene_detections.png").is_file()
