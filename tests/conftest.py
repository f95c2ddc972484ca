"""Shared fixtures: composed Hydra configs pointed at a temporary run directory."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import compose_config
from omegaconf import DictConfig

from experiments.train import train


@pytest.fixture
def make_cfg(tmp_path: Path):
    """``make_cfg(overrides, config_name="train", logger=None)`` → a composed config under tmp_path."""

    def _make(
        overrides: list[str], config_name: str = "train", logger: str | None = None
    ) -> DictConfig:
        return compose_config(config_name, overrides, tmp_path, logger)

    return _make


@pytest.fixture(scope="session")
def lenet_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """last.ckpt of LeNet-5 trained 3 epochs on scikit-learn digits (shared by several tests)."""
    out = tmp_path_factory.mktemp("lenet_digits")
    train(compose_config("train", ["trainer.max_epochs=3", "test=false"], out))
    return out / "checkpoints" / "last.ckpt"


@pytest.fixture(autouse=True, scope="module")
def single_torch_thread() -> Iterator[None]:
    """One intra-op thread per test module: the tests' tensors are tiny, and with 2 OpenMP threads
    small ops ran 10-20x slower whenever the 2-core machine was busy (oversubscription)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
