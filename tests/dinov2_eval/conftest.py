"""Shared settings of the DINOv2 evaluation tests: one thread, a tiny backbone."""

import pytest
import torch

from lightning_modules.components.vit import DINOv2Backbone


@pytest.fixture
def tiny_backbone() -> DINOv2Backbone:
    torch.manual_seed(0)
    return DINOv2Backbone(
        None, img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2
    ).eval()
