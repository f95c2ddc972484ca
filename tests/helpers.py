"""Test helpers: the environment the tests run in and composed Hydra configs."""

import os
from pathlib import Path

import lightning as L
import torch

from experiments.compose import compose_run_config as compose_config  # noqa: F401 (re-export)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

os.environ.setdefault("PROJECT_ROOT", str(REPO_ROOT))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if "DATA_DIR" not in os.environ and SHARED_DATA.is_dir():
    os.environ["DATA_DIR"] = str(SHARED_DATA)


def has_real_data(name: str) -> bool:
    """Whether torchvision's raw files of ``name`` (e.g. "MNIST") are under DATA_DIR."""
    root = os.environ.get("DATA_DIR")
    return bool(root) and (Path(root) / name / "raw").is_dir()


class Crash(RuntimeError):
    """A simulated crash (a killed job)."""


class CrashAfterStep(L.Callback):
    """Crashes when step ``step + 1`` begins, i.e. after the checkpoint of step ``step`` was written."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step >= self.step:
            raise Crash(f"simulated crash at step {trainer.global_step}")


def with_extra_callback(callback: L.Callback):
    """A replacement for ``instantiate_callbacks`` that appends ``callback``."""
    from experiments import instantiate as inst

    def build(cfg, run_config):
        return [*inst.instantiate_callbacks(cfg, run_config), callback]

    return build


def randomise_bn(model: "torch.nn.Module", seed: int) -> "torch.nn.Module":
    """Random γ, β and running statistics in every BatchNorm2d (far from the identity); eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(1 + 0.5 * torch.randn(n, generator=gen, dtype=torch.float64))
                m.bias.copy_(0.5 * torch.randn(n, generator=gen, dtype=torch.float64))
                m.running_mean.copy_(0.5 * torch.randn(n, generator=gen, dtype=torch.float64))
                m.running_var.copy_(0.5 + torch.rand(n, generator=gen, dtype=torch.float64))
    return model.eval()
