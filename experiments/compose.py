"""Compose a run config in-process, as ``@hydra.main`` would (for benchmarks, sweeps and tests)."""

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def compose_run_config(
    config_name: str, overrides: list[str], output_dir: str | Path, logger: str | None = None
) -> DictConfig:
    """``configs/<config_name>.yaml`` with ``overrides``, writing into ``output_dir``.

    ``logger`` picks a logger group (``wandb``, ``csv``, ...); None disables logging.
    """
    GlobalHydra.instance().clear()
    logger_override = [f"logger={logger}" if logger else "~logger"]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose(config_name, overrides=overrides + logger_override, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # resolves ${hydra:...} interpolations
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        del cfg.hydra
    return cfg
