"""DINOv2 user errors reach the command line as ``error: ...`` and exit status 2, no traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO_ROOT
from hydra.errors import InstantiationException

from experiments.errors import exit_on_user_error
from lightning_modules.dinov2_checkpoint import DINOv2CheckpointError, PrototypeMismatchError
from lightning_modules.dinov2_module import NonFiniteLossError


def _wrapped_by_hydra(err: Exception) -> InstantiationException:
    """``err`` as Hydra re-raises it from ``instantiate`` (a config object that failed to build)."""
    try:
        raise InstantiationException(f"Error in call to target: {err}") from err
    except InstantiationException as wrapped:
        return wrapped


MISMATCH = "the student DINO head has 32 prototypes"


@pytest.mark.parametrize(
    ("err", "message"),
    [
        (NonFiniteLossError("non-finite loss at step 3"), "non-finite loss at step 3"),
        (DINOv2CheckpointError("checkpoint x.ckpt is absent"), "checkpoint x.ckpt is absent"),
        (PrototypeMismatchError(MISMATCH), MISMATCH),
        (_wrapped_by_hydra(PrototypeMismatchError(MISMATCH)), MISMATCH),
    ],
    ids=["nan_loss", "checkpoint", "prototypes", "prototypes_in_instantiate"],
)
def test_user_errors_exit_2_with_message(err: Exception, message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exited, exit_on_user_error():
        raise err
    assert exited.value.code == 2
    assert capsys.readouterr().err == f"error: {message}\n"  # the cause, not Hydra's wrapper


def test_other_errors_keep_their_traceback() -> None:
    with pytest.raises(InstantiationException), exit_on_user_error():
        raise _wrapped_by_hydra(ZeroDivisionError("a bug"))
    with pytest.raises(ValueError), exit_on_user_error():
        raise ValueError("a bug")


def test_cli_distillation_without_teacher_checkpoint(tmp_path: Path) -> None:
    """The real entry point: a missing checkpoint is one line on stderr and exit status 2."""
    missing = tmp_path / "no_such.ckpt"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "experiments" / "train.py"),
         "experiment=dinov2_distill_tiny", f"model.teacher_checkpoint={missing}", "logger=csv",
         "torch_threads=1", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "WANDB_MODE": "offline"},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"error: checkpoint {missing} does not exist" in result.stderr
    assert "Traceback" not in result.stderr
