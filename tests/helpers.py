"""Test helpers: the environment the tests run in and composed Hydra configs."""

import os
from pathlib import Path

import lightning as L
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "configs"
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


def compose_config(
    config_name: str, overrides: list[str], output_dir: Path, logger: str | None = None
) -> DictConfig:
    """Compose ``configs/<config_name>.yaml`` as ``@hydra.main`` would, writing into ``output_dir``."""
    GlobalHydra.instance().clear()
    logger_override = [f"logger={logger}" if logger else "~logger"]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose(config_name, overrides=overrides + logger_override, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        del cfg.hydra
    return cfg


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
