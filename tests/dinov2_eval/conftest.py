"""Shared settings of the DINOv2 evaluation tests: one thread, a tiny backbone."""

from collections.abc import Iterator

import pytest
import torch

from lightning_modules.components.vit import DINOv2Backbone


@pytest.fixture(autouse=True, scope="module")
def single_thread() -> Iterator[None]:
    """One intra-op thread: tiny tensors on a shared 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def tiny_backbone() -> DINOv2Backbone:
    torch.manual_seed(0)
    return DINOv2Backbone(
        None, img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2
    ).eval()
