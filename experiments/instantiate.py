"""Build callbacks, loggers and the trainer from the Hydra config."""

from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from callbacks.atomic_checkpoint_io import AtomicCheckpointIO
from callbacks.run_metadata import RunMetadataCallback, read_wandb_run_id
from experiments.errors import CheckpointError


def apply_runtime_settings(cfg: DictConfig) -> None:
    """Seed every RNG (also in dataloader workers) and set the CPU thread count if configured."""
    L.seed_everything(cfg.seed, workers=True)
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg.torch_threads))


def resolve_resume(cfg: DictConfig) -> str | None:
    """The checkpoint to resume from: ``ckpt_path``, or ``<resume_dir>/checkpoints/last.ckpt``."""
    if cfg.get("resume_dir") and cfg.get("ckpt_path"):
        raise CheckpointError("Pass either ckpt_path= or resume_dir=, not both.")
    if cfg.get("resume_dir"):
        last = Path(cfg.resume_dir) / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise CheckpointError(f"resume_dir={cfg.resume_dir} holds no checkpoints/last.ckpt.")
        return str(last)
    return cfg.get("ckpt_path")


def instantiate_callbacks(cfg: DictConfig, run_config: dict[str, Any]) -> list[L.Callback]:
    """Every ``_target_`` entry of ``cfg.callbacks`` plus the run-metadata callback."""
    callbacks = [
        instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c
    ]
    callbacks.append(RunMetadataCallback(run_config, cfg.paths.checkpoint_dir))
    return callbacks


def instantiate_loggers(cfg: DictConfig, resume_ckpt: str | None) -> list[Logger]:
    """Loggers from ``cfg.logger``; a resumed run continues the W&B run stored beside its checkpoint."""
    wandb_id = read_wandb_run_id(Path(resume_ckpt).parent) if resume_ckpt else None
    loggers: list[Logger] = []
    for lg_cfg in (cfg.get("logger") or {}).values():
        if not lg_cfg or "_target_" not in lg_cfg:
            continue
        kwargs: dict[str, Any] = {}
        if lg_cfg._target_.endswith("WandbLogger"):
            Path(lg_cfg.save_dir).mkdir(parents=True, exist_ok=True)
            if wandb_id and not lg_cfg.get("id"):
                kwargs = {"id": wandb_id, "resume": "allow"}
        loggers.append(instantiate(lg_cfg, **kwargs))
    return loggers


def instantiate_trainer(
    cfg: DictConfig, callbacks: list[L.Callback], loggers: list[Logger]
) -> L.Trainer:
    """The trainer with atomic checkpoint writes."""
    return instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
    )


def log_hyperparameters(cfg: DictConfig, model: L.LightningModule, loggers: list[Logger]) -> None:
    """Send the resolved config and parameter counts to every logger."""
    params = {
        "model/params_total": sum(p.numel() for p in model.parameters()),
        "model/params_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        logger.log_hyperparams({**resolved, **params})


def close_loggers(loggers: list[Logger], failed: bool) -> None:
    """Always finish the W&B run, also when training raised."""
    if any(isinstance(lg, WandbLogger) for lg in loggers):
        import wandb

        wandb.finish(exit_code=1 if failed else 0)
