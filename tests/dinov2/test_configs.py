"""The DINOv2 presets compose with the recipes they promise (tests/test_configs.py instantiates them)."""

from pathlib import Path

import pytest
from helpers import compose_config


def _cfg(experiment: str, tmp_path: Path):
    return compose_config("train", [f"experiment={experiment}"], tmp_path)


def test_vits14_is_the_reference_default_recipe(tmp_path: Path) -> None:
    cfg = _cfg("dinov2_vits14", tmp_path)
    assert cfg.model.backbone.arch == "vit_small_patch14_dinov2"
    assert (cfg.data.crops.global_size, cfg.data.crops.local_size, cfg.data.crops.n_local) == (
        224,
        98,
        8,
    )
    assert cfg.model.dino_head.out_dim == 65536 and not cfg.model.ibot.separate_head
    assert cfg.model.teacher.target_mode == "centering" and cfg.trainer.max_steps == 125_000


def test_vitl14_sk_is_the_papers_final_recipe(tmp_path: Path) -> None:
    m = _cfg("dinov2_vitl14_sk", tmp_path).model
    assert m.backbone.arch == "vit_large_patch14_dinov2" and m.backbone.ffn == "swiglu"
    assert m.teacher.target_mode == "sinkhorn_knopp" and m.ibot.separate_head
    assert m.dino_head.out_dim == m.ibot.head.out_dim == 131072
    assert (m.dino_head.bottleneck_dim, m.ibot.head.bottleneck_dim) == (384, 256)
    assert m.optim.layer_decay == 1.0 and m.backbone.drop_path == 0.4


def test_highres_continues_from_a_checkpoint(tmp_path: Path) -> None:
    cfg = _cfg("dinov2_vits14_highres", tmp_path)
    assert cfg.data.crops.global_size == cfg.model.backbone.img_size == 518
    assert cfg.trainer.max_steps == 10_000 and cfg.model.require_init_checkpoint
    assert cfg.model.optim.base_lr < _cfg("dinov2_vits14", tmp_path).model.optim.base_lr


@pytest.mark.parametrize(
    "experiment", ["dinov2_tiny_digits", "dinov2_tiny_fashionmnist", "dinov2_distill_tiny"]
)
def test_cpu_presets(experiment: str, tmp_path: Path) -> None:
    cfg = _cfg(experiment, tmp_path)
    assert (
        cfg.trainer.accelerator == "cpu" and cfg.data.crops.global_size % cfg.data.patch_size == 0
    )
    if experiment == "dinov2_distill_tiny":
        assert cfg.model.dino_head.out_dim == cfg.model.teacher_heads.dino.out_dim
        assert cfg.model.backbone.drop_path == 0.0 and cfg.data.masking.probability == 0.0


def test_tiny_digits_is_the_make_train_default_and_reports_knn(tmp_path: Path) -> None:
    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    assert "TRAIN_EXPERIMENT ?= dinov2_tiny_digits" in makefile
    assert "experiments/train.py experiment=$(TRAIN_EXPERIMENT) $(ARGS)" in makefile
    cfg = _cfg("dinov2_tiny_digits", tmp_path)
    knn = cfg.callbacks.knn_eval
    assert knn.at_train_start and knn.dataset == "digits" and knn.every_n_epochs is None
    # the settings that keep its DINO loss off ln K (see the preset's comment)
    assert cfg.data.crops.color_jitter_p == cfg.data.crops.grayscale_p == 0.0
    assert cfg.model.teacher.temp == cfg.model.teacher.warmup_temp == 0.02
