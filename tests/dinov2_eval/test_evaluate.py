"""experiments/evaluate.py on DINOv2-style checkpoints (kNN + linear probe) and classifiers."""

from pathlib import Path

import lightning as L
import pytest
import torch
from dinov2_eval.tiny_dinov2 import TinyDINOv2LitModule, random_loader
from helpers import compose_config
from hydra.utils import instantiate
from omegaconf import OmegaConf

from callbacks.run_metadata import RunMetadataCallback
from experiments.errors import UserFacingError
from experiments.evaluate import evaluate, is_dinov2_run
from experiments.train import train

TINY_TARGET = "dinov2_eval.tiny_dinov2.TinyDINOv2LitModule"
PROBE = ["probe.train_size=300", "probe.val_size=100", "probe.test_size=200",
         "probe.linear.steps=40", "probe.linear.lrs=[0.001,0.1]"]  # fmt: skip
KNN_KEYS = {f"probe/knn_top1_k{k}" for k in (10, 20, 100, 200)}


def tiny_checkpoint(tmp_path: Path, source: str = "digits") -> Path:
    """Two steps of the tiny module, saved with a run config naming a "dinov2" target."""
    run_config = {"model": {"_target_": TINY_TARGET, "img_size": 16}, "data": {"source": source}}
    L.seed_everything(0)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        callbacks=[RunMetadataCallback(run_config, str(tmp_path))],
    )  # fmt: skip
    trainer.fit(TinyDINOv2LitModule(), random_loader())
    path = tmp_path / "tiny.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_dinov2_checkpoint_gets_knn_and_linear_probes(tmp_path: Path, capsys) -> None:
    ckpt = tiny_checkpoint(tmp_path)
    cfg = compose_config("eval", [f"ckpt_path={ckpt}", *PROBE], tmp_path / "eval")
    with pytest.warns(UserWarning, match="2 blocks"):
        metrics = evaluate(cfg)
    assert set(metrics) >= KNN_KEYS
    assert {"probe/linear_top1", "probe/linear_test_top1", "probe/linear_best_lr"} <= set(metrics)
    assert all(0.0 <= metrics[k] <= 1.0 for k in KNN_KEYS)
    assert metrics["probe/knn_top1_k20"] > 0.2  # random tiny-ViT features on digits: above chance
    out = capsys.readouterr().out
    assert "probe/knn_top1_k20" in out and "linear best config" in out and "digits" in out


def test_unlabelled_training_data_needs_a_probe_dataset(tmp_path: Path) -> None:
    model = TinyDINOv2LitModule()
    run_config = {"model": {"_target_": TINY_TARGET}, "data": {"source": "image_folder"}}
    torch.save({"state_dict": model.state_dict(), "run_config": run_config}, tmp_path / "a.ckpt")
    cfg = compose_config("eval", [f"ckpt_path={tmp_path / 'a.ckpt'}", *PROBE], tmp_path / "eval")
    with pytest.raises(UserFacingError, match="probe.dataset="):
        evaluate(cfg)


def test_classifier_checkpoints_keep_the_test_path(tmp_path: Path) -> None:
    train_cfg = compose_config("train", [], tmp_path / "train")
    assert not is_dinov2_run(train_cfg)
    run_config = OmegaConf.to_container(train_cfg, resolve=True)
    model = instantiate(train_cfg.model)
    torch.save({"state_dict": model.state_dict(), "run_config": run_config}, tmp_path / "c.ckpt")
    metrics = evaluate(compose_config("eval", [f"ckpt_path={tmp_path / 'c.ckpt'}"], tmp_path / "e"))
    assert "test/acc" in metrics and not any(k.startswith("probe/") for k in metrics)


def test_real_dinov2_tiny_experiment_is_probed(tmp_path: Path) -> None:
    overrides = [
        "experiment=dinov2_tiny_digits", "trainer.max_steps=2", "data.batch_size=8",
        "data.num_workers=0", "model.backbone.embed_dim=32", "model.backbone.depth=2",
        "model.backbone.num_heads=2",
        "model.dino_head={out_dim: 64, hidden_dim: 32, bottleneck_dim: 16, nlayers: 2}",
        "model.ibot.head={out_dim: 64, hidden_dim: 32, bottleneck_dim: 16, nlayers: 2}",
    ]  # fmt: skip
    train(compose_config("train", overrides, tmp_path / "run"))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    metrics = evaluate(compose_config("eval", [f"ckpt_path={ckpt}", *PROBE], tmp_path / "eval"))
    assert set(metrics) >= KNN_KEYS and 0.0 <= metrics["probe/linear_top1"] <= 1.0
