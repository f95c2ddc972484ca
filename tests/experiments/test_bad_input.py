"""Bad input gets one clear message, not a traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO_ROOT, compose_config
from hydra.utils import instantiate

from datamodules.components.errors import DatasetNotFoundError
from experiments.errors import CheckpointError
from experiments.train import train


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline"}
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "experiments" / "train.py"), *args],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip


def test_unknown_experiment_lists_available_ones(tmp_path: Path) -> None:
    result = _cli("experiment=no_such_thing", f"hydra.run.dir={tmp_path}")
    assert result.returncode != 0
    assert "no_such_thing" in result.stderr
    assert "lenet5_mnist" in result.stderr and "vgg16_cifar10" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_dataset_names_path_and_fix(tmp_path: Path) -> None:
    missing = tmp_path / "nothing_here"
    result = _cli(
        "experiment=lenet5_mnist", f"paths.data_dir={missing}", "logger=csv",
        f"hydra.run.dir={tmp_path / 'run'}",
    )  # fmt: skip
    assert result.returncode == 2
    assert str(missing) in result.stderr
    assert "DATA_DIR" in result.stderr and "data.download=true" in result.stderr
    assert "Traceback" not in result.stderr


def test_cifar10_absent_offline_raises_clear_error(tmp_path: Path) -> None:
    cfg = compose_config("train", ["experiment=vgg16_cifar10", f"paths.data_dir={tmp_path}"],
                         tmp_path / "run")  # fmt: skip
    with pytest.raises(DatasetNotFoundError, match="cifar10"):
        instantiate(cfg.data).setup("fit")


def test_corrupt_checkpoint(lenet_checkpoint: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(lenet_checkpoint.read_bytes()[:5000])
    cfg = compose_config("train", ["debug=limit", f"ckpt_path={broken}"], tmp_path / "run")
    with pytest.raises(CheckpointError, match="corrupt or truncated") as err:
        train(cfg)
    assert str(broken) in str(err.value)


def test_mismatched_checkpoint_names_layers_and_shapes(
    lenet_checkpoint: Path, tmp_path: Path
) -> None:
    cfg = compose_config(
        "train", ["debug=limit", "model=lenet5_caffe", f"ckpt_path={lenet_checkpoint}"],
        tmp_path / "run",
    )  # fmt: skip
    with pytest.raises(CheckpointError) as err:
        train(cfg)
    message = str(err.value)
    assert "does not fit the configured model" in message
    assert "net.features.0.weight: checkpoint (6, 1, 5, 5) vs model (20, 1, 5, 5)" in message
    assert "trained with net=lightning_modules.components.cnn.LeNet5" in message


def test_missing_resume_dir(tmp_path: Path) -> None:
    cfg = compose_config("train", ["debug=limit", f"resume_dir={tmp_path}"], tmp_path / "run")
    with pytest.raises(CheckpointError, match="holds no checkpoints/last.ckpt"):
        train(cfg)


def test_checkpoint_is_loadable_with_weights_only(lenet_checkpoint: Path) -> None:
    # no pickled objects: safe to load on torch >= 2.6 defaults
    assert "state_dict" in torch.load(lenet_checkpoint, weights_only=True)
