"""Shared settings for the DINOv2 component tests."""

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def single_thread() -> Iterator[None]:
    """One intra-op thread: these tensors are tiny, and on a shared 2-core machine thread
    contention makes small ops 10-20x slower (as in DataLoader workers, which also use one)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
