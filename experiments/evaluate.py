"""Evaluate a checkpoint on its test split: ``python experiments/evaluate.py ckpt_path=PATH``.

The architecture comes from the checkpoint's stored run config, so a checkpoint evaluates without
the config it was trained with; ``data.*`` overrides (e.g. ``+data.data_dir=...``) still apply.
"""

import os
from pathlib import Path

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from experiments.checkpoints import check_state_dict_compatible, load_checkpoint
from experiments.errors import CheckpointError, exit_on_user_error
from experiments.instantiate import close_loggers, instantiate_loggers
from experiments.summary import format_summary

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Rebuild model and data from the checkpoint's run config and run ``trainer.test``."""
    L.seed_everything(cfg.seed, workers=True)
    checkpoint = load_checkpoint(cfg.ckpt_path)
    if "run_config" not in checkpoint:
        raise CheckpointError(
            f"Checkpoint {cfg.ckpt_path} has no stored run config; it was not written by "
            "experiments/train.py."
        )
    run_cfg = OmegaConf.create(checkpoint["run_config"])
    data_cfg = run_cfg.data
    with open_dict(data_cfg):
        data_cfg.data_dir = cfg.paths.data_dir  # the data root of this machine, not the trainer's
        data_cfg.merge_with(cfg.get("data") or {})
    model = instantiate(run_cfg.model)
    check_state_dict_compatible(checkpoint, model, cfg.ckpt_path)
    model.load_state_dict(checkpoint["state_dict"])
    datamodule = instantiate(data_cfg)
    loggers = instantiate_loggers(cfg, None)
    trainer = instantiate(cfg.trainer, logger=loggers or False)
    failed = True
    try:
        trainer.test(model, datamodule=datamodule)
        failed = False
    finally:
        close_loggers(loggers, failed)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    print(format_summary(metrics, {"checkpoint": str(cfg.ckpt_path)}))
    return metrics


@hydra.main(version_base="1.3", config_path="../configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        evaluate(cfg)


if __name__ == "__main__":
    main()
