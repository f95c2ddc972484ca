"""Train any experiment from configs/: ``python experiments/train.py experiment=NAME key=value ...``.

``train(cfg)`` holds the logic (tests call it directly); ``main`` is the thin Hydra entry point.
"""

import os
from pathlib import Path

import hydra
import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from experiments.checkpoints import check_state_dict_compatible, load_checkpoint
from experiments.errors import exit_on_user_error
from experiments.instantiate import (
    apply_runtime_settings,
    close_loggers,
    instantiate_callbacks,
    instantiate_loggers,
    instantiate_trainer,
    log_hyperparameters,
    resolve_resume,
)
from experiments.summary import format_summary

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, then test the best checkpoint; returns the final metrics."""
    apply_runtime_settings(cfg)
    run_config = OmegaConf.to_container(cfg, resolve=True)
    resume_ckpt = resolve_resume(cfg)
    datamodule: L.LightningDataModule = instantiate(cfg.data)
    model: L.LightningModule = instantiate(cfg.model)
    if resume_ckpt:
        check_state_dict_compatible(load_checkpoint(resume_ckpt), model, resume_ckpt)
    callbacks = instantiate_callbacks(cfg, run_config)
    loggers = instantiate_loggers(cfg, resume_ckpt)
    trainer = instantiate_trainer(cfg, callbacks, loggers)
    log_hyperparameters(cfg, model, loggers)
    failed = True
    try:
        if cfg.get("train", True):
            trainer.fit(model, datamodule=datamodule, ckpt_path=resume_ckpt)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        if cfg.get("test"):
            best = _best_checkpoint(trainer)
            trainer.test(model, datamodule=datamodule, ckpt_path=best, weights_only=False)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        failed = False
    finally:
        close_loggers(loggers, failed)
    if trainer.is_global_zero:
        print(format_summary(metrics, _locations(cfg, trainer)))
    return metrics


def _best_checkpoint(trainer: L.Trainer) -> str | None:
    """The monitored best checkpoint, or None (test the weights in memory)."""
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.monitor and cb.best_model_path:
            return cb.best_model_path
    return None


def _locations(cfg: DictConfig, trainer: L.Trainer) -> dict[str, str]:
    best = _best_checkpoint(trainer) or ""
    return {"best checkpoint": best, "output dir": cfg.paths.output_dir}


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        train(cfg)


if __name__ == "__main__":
    main()
