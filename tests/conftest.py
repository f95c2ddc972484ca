"""Shared fixtures: composed Hydra configs pointed at a temporary run directory."""

from pathlib import Path

import pytest
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
