"""configs/callbacks/ssl_eval.yaml composes, instantiates and probes a real tiny DINOv2 run."""

from pathlib import Path

from helpers import compose_config

from callbacks.feature_pictures import FeaturePicturesCallback
from callbacks.knn_eval import KNNEvalCallback
from callbacks.linear_probe import LinearProbeCallback
from experiments.instantiate import instantiate_callbacks
from experiments.train import train

TINY = [
    "experiment=dinov2_tiny_digits", "callbacks=ssl_eval", "trainer.max_steps=2",
    "data.batch_size=8", "data.num_workers=0", "model.backbone.embed_dim=32",
    "model.backbone.depth=2", "model.backbone.num_heads=2",
    "model.dino_head={out_dim: 64, hidden_dim: 32, bottleneck_dim: 16, nlayers: 2}",
    "model.ibot.head={out_dim: 64, hidden_dim: 32, bottleneck_dim: 16, nlayers: 2}",
]  # fmt: skip
SMALL_PROBES = [
    "callbacks.knn_eval.train_size=300", "callbacks.knn_eval.test_size=100",
    "callbacks.linear_probe.train_size=200", "callbacks.linear_probe.val_size=100",
    "callbacks.linear_probe.test_size=100", "callbacks.linear_probe.steps=20",
    "callbacks.linear_probe.lrs=[0.01]", "callbacks.feature_pictures.num_images=2",
]  # fmt: skip


def test_ssl_eval_callbacks_instantiate(tmp_path: Path) -> None:
    cfg = compose_config("train", ["experiment=dinov2_tiny_digits", "callbacks=ssl_eval"], tmp_path)
    assert cfg.callbacks.knn_eval.dataset == "digits"  # from data.source
    kinds = {type(c) for c in instantiate_callbacks(cfg, {})}
    assert {KNNEvalCallback, LinearProbeCallback, FeaturePicturesCallback} <= kinds
    assert "ema_teacher" in cfg.callbacks  # callbacks/ssl.yaml is included


def test_tiny_dinov2_run_reports_probes_at_train_end(tmp_path: Path) -> None:
    metrics = train(compose_config("train", TINY + SMALL_PROBES, tmp_path))
    for k in (10, 20, 100, 200):
        assert 0.0 <= metrics[f"probe/knn_top1_k{k}"] <= 1.0
    assert 0.0 <= metrics["probe/linear_top1"] <= 1.0
    assert len(list((tmp_path / "feature_pictures").glob("*_step000002.png"))) == 2
