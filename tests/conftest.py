"""Shared fixtures: composed Hydra configs pointed at a temporary run directory."""

from pathlib import Path

import pytest
from helpers import compose_config
from omegaconf import DictConfig


@pytest.fixture
def make_cfg(tmp_path: Path):
    """``make_cfg(overrides, config_name="train", logger=None)`` → a composed config under tmp_path."""

    def _make(
        overrides: list[str], config_name: str = "train", logger: str | None = None
    ) -> DictConfig:
        return compose_config(config_name, overrides, tmp_path, logger)

    return _make
