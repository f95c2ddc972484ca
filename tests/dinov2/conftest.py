"""Shared settings for the DINOv2 system tests: a tiny model on a small digits subset."""

import pytest

HEAD = "{out_dim: 64, hidden_dim: 64, bottleneck_dim: 32, nlayers: 2}"
#: A 2-block, 32-wide ViT (patch 4, 16 / 8 px crops) on 48 digits, 8 images per step.
TINY = [
    "experiment=dinov2_tiny_digits",
    "data.num_workers=0",
    "data.batch_size=8",
    "data.subset=48",
    "model.backbone.embed_dim=32",
    "model.backbone.depth=2",
    "model.backbone.num_heads=2",
    f"model.dino_head={HEAD}",
    f"model.ibot.head={HEAD}",
    "model.teacher.target_mode=centering",  # the checkpoint tests need centers
    "++callbacks.knn_eval=null",  # the preset's kNN before/after training (tested on its own)
    "trainer.enable_model_summary=false",
    "+trainer.enable_progress_bar=false",
    "test=false",
]


@pytest.fixture(scope="session")
def tiny() -> tuple[str, ...]:
    """Overrides of the tiny test configuration."""
    return tuple(TINY)
