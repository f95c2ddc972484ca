"""Spec §13 test 14: a short tiny-config pretraining run beats chance kNN and is not at ln K."""

import math
from pathlib import Path

import pytest
from helpers import compose_config

from experiments.train import train

CHANCE = 0.1  # 10 digit classes


@pytest.mark.slow
def test_tiny_pretraining_beats_chance_knn(tmp_path: Path) -> None:
    overrides = [
        "experiment=dinov2_tiny_digits", "callbacks=ssl_eval",
        "callbacks.knn_eval.every_n_epochs=null",       # kNN once, at the end of training
        "callbacks.linear_probe.every_n_epochs=null", "callbacks.linear_probe.at_train_end=false",
        "callbacks.feature_pictures.every_n_epochs=null",
    ]  # fmt: skip
    cfg = compose_config("train", overrides, tmp_path)
    metrics = train(cfg)
    knn = metrics["probe/knn_top1_k20"]
    print(f"tiny DINOv2, {cfg.trainer.max_steps} steps on digits: kNN top-1 (k=20) = {knn:.4f}")
    assert knn > CHANCE + 0.2
    dino = metrics["train/loss_dino_local"] + metrics["train/loss_dino_global"]
    assert abs(dino - math.log(cfg.model.dino_head.out_dim)) > 0.05  # not uniform collapse
