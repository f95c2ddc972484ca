"""The probe callbacks inside a real ``L.Trainer`` fit: metrics, pictures, no trace in training."""

import csv
import logging
from pathlib import Path

import lightning as L
import pytest
import torch
from dinov2_eval.tiny_dinov2 import TinyDINOv2LitModule, random_loader
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from callbacks.feature_pictures import FeaturePicturesCallback
from callbacks.knn_eval import KNNEvalCallback, PeriodicProbeCallback
from callbacks.linear_probe import LinearProbeCallback

DATA = {"dataset": "digits", "data_dir": "unused", "image_size": None}


class ModeCheck(L.Callback):
    """Fails the fit if a probe left the student in eval mode."""

    def on_train_batch_start(self, trainer, pl_module, *args) -> None:
        assert pl_module.student.training and not pl_module.teacher.training


class CountingProbe(PeriodicProbeCallback):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs, train_size=0, test_size=0)
        self.steps: list[int] = []  # test bookkeeping only

    def evaluate(self, backbone) -> dict[str, float]:
        return {}

    def run(self, trainer, pl_module) -> None:
        before = self._last_step
        super().run(trainer, pl_module)
        if self._last_step != before:
            self.steps.append(trainer.global_step)


def fit(tmp_path: Path, callbacks: list[L.Callback], logger=False, batch_size=8, **trainer_kwargs):
    L.seed_everything(0)
    model = TinyDINOv2LitModule()
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=2, logger=logger, callbacks=callbacks,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, **trainer_kwargs,
    )  # fmt: skip
    trainer.fit(model, random_loader(batch_size=batch_size))
    return model, trainer


def test_probes_log_metrics_and_leave_training_unchanged(tmp_path: Path) -> None:
    reference, _ = fit(tmp_path / "plain", [])
    reference_rng = torch.get_rng_state()
    callbacks = [
        KNNEvalCallback(**DATA, train_size=300, test_size=200, every_n_epochs=1),
        LinearProbeCallback(**DATA, train_size=200, val_size=100, test_size=100,
                            every_n_steps=3, every_n_epochs=None, lrs=(1e-3, 0.1), steps=30),
        FeaturePicturesCallback(**DATA, num_images=3, every_n_epochs=2),
        ModeCheck(),
    ]  # fmt: skip
    loggers = [WandbLogger(save_dir=str(tmp_path), offline=True), CSVLogger(tmp_path)]
    try:
        with pytest.warns(UserWarning, match="backbone has 2 blocks"):
            model, trainer = fit(tmp_path / "probed", callbacks, logger=loggers)
    finally:
        import wandb

        wandb.finish()
    assert torch.equal(torch.get_rng_state(), reference_rng)
    for (name, p), q in zip(
        model.state_dict().items(), reference.state_dict().values(), strict=True
    ):
        assert torch.equal(p, q), name
    metrics = trainer.callback_metrics
    for k in (10, 20, 100, 200):
        assert 0.0 <= float(metrics[f"probe/knn_top1_k{k}"]) <= 1.0
    assert float(metrics["probe/knn_top1_k20"]) > 0.2  # random ViT features: above chance (0.1)
    assert 0.0 <= float(metrics["probe/linear_top1"]) <= 1.0
    assert float(metrics["probe/linear_best_lr"]) in (pytest.approx(1e-3), pytest.approx(0.1))
    assert float(metrics["probe/linear_best_n_blocks"]) in (1.0, 2.0)  # 4 clipped to depth 2
    assert "probe/linear_test_top1" in metrics
    pictures = sorted(p.name for p in (tmp_path / "probed" / "feature_pictures").iterdir())
    assert pictures == ["attention_step000004.png", "pca_step000004.png"]
    media = list((tmp_path / "wandb").glob("offline-run-*/files/media/images/pictures/*.png"))
    assert len(media) == 2
    with open(next(tmp_path.glob("lightning_logs/version_*/metrics.csv"))) as f:
        rows = list(csv.DictReader(f))
    linear_steps = [int(r["step"]) for r in rows if r.get("probe/linear_top1")]
    assert linear_steps == [3, 4]  # every 3 steps, then at the end of training (4 steps)
    knn_steps = [int(r["step"]) for r in rows if r.get("probe/knn_top1_k20")]
    assert knn_steps == [2, 4]  # every epoch (2 steps each)


def test_runs_once_per_optimizer_step_and_keeps_its_step_in_state(tmp_path: Path) -> None:
    probe = CountingProbe(**DATA, every_n_steps=2, every_n_epochs=1)
    _, trainer = fit(tmp_path, [probe], batch_size=2, accumulate_grad_batches=2)  # 4 steps/epoch
    assert probe.steps == [2, 4, 6, 8]  # the epoch-end and train-end triggers coincide
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    saved = torch.load(tmp_path / "c.ckpt", weights_only=True)["callbacks"]
    assert saved[probe.state_key] == {"last_step": 8}
    restored = CountingProbe(**DATA)
    restored.load_state_dict(probe.state_dict())
    assert restored.state_dict() == {"last_step": 8}


def test_at_train_start_evaluates_the_initial_network_and_prints(tmp_path: Path, caplog) -> None:
    probe = CountingProbe(**DATA, every_n_epochs=None, at_train_start=True)
    lightning_logger = logging.getLogger("lightning.pytorch")  # may not propagate to the root
    lightning_logger.addHandler(caplog.handler)
    try:
        fit(tmp_path, [probe], batch_size=4)  # 16 random images: 4 steps per epoch, 2 epochs
    finally:
        lightning_logger.removeHandler(caplog.handler)
    assert probe.steps == [0, 8]  # before the first update, and when training ends
    printed = [r.getMessage() for r in caplog.records if "CountingProbe at" in r.getMessage()]
    assert printed == ["CountingProbe at step 0: ", "CountingProbe at step 8: "]
