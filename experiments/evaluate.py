"""Evaluate a checkpoint on its test split: ``python experiments/evaluate.py ckpt_path=PATH``.

The architecture comes from the checkpoint's stored run config, so a checkpoint evaluates without
the config it was trained with; ``data.*`` overrides (e.g. ``+data.data_dir=...``) still apply.

Self-supervised DINOv2 checkpoints (a model ``_target_`` containing "dinov2") have no test
step: their ``eval_backbone`` (the teacher) is probed instead with the kNN classifier and the
linear-probe grid of spec §9, on the labelled dataset of ``probe.*`` in ``configs/eval.yaml``.
"""

import os
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from callbacks.knn_eval import LABELLED_DATASETS, KNNEvalCallback, isolated_evaluation
from callbacks.linear_probe import LinearProbeCallback
from experiments.checkpoints import check_state_dict_compatible, load_checkpoint
from experiments.errors import CheckpointError, UserFacingError, exit_on_user_error
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
    if is_dinov2_run(run_cfg):
        return evaluate_ssl_probes(cfg, run_cfg, checkpoint)
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


def is_dinov2_run(run_cfg: DictConfig) -> bool:
    """Whether the checkpoint's model is a DINOv2 system (pretraining or distillation)."""
    return "dinov2" in str(OmegaConf.select(run_cfg, "model._target_", default="")).lower()


def probe_dataset(cfg: DictConfig, run_cfg: DictConfig) -> str:
    """``probe.dataset``, or else the training data's source when it is a labelled dataset."""
    name = cfg.probe.dataset or OmegaConf.select(run_cfg, "data.source", default=None)
    name = name or OmegaConf.select(run_cfg, "data.dataset", default=None)
    if name not in LABELLED_DATASETS:
        raise UserFacingError(
            f"No labelled probe dataset: the checkpoint was trained on {name!r}. Pass "
            f"probe.dataset=<one of {', '.join(sorted(LABELLED_DATASETS))}>."
        )
    return name


def _probe_device(cfg: DictConfig) -> torch.device:
    wants_gpu = str(cfg.trainer.get("accelerator", "cpu")) in ("gpu", "cuda", "auto")
    return torch.device("cuda" if wants_gpu and torch.cuda.is_available() else "cpu")


def evaluate_ssl_probes(cfg: DictConfig, run_cfg: DictConfig, checkpoint: dict) -> dict[str, float]:
    """kNN (k ∈ probe.knn.ks, T) and the linear-probe grid on the checkpoint's ``eval_backbone``."""
    model = instantiate(run_cfg.model)
    check_state_dict_compatible(checkpoint, model, cfg.ckpt_path)
    model.load_state_dict(checkpoint["state_dict"])
    model.to(_probe_device(cfg))
    probe = OmegaConf.to_container(cfg.probe, resolve=True)
    common = {
        "dataset": probe_dataset(cfg, run_cfg), "data_dir": cfg.paths.data_dir,
        "image_size": probe["image_size"], "train_size": probe["train_size"],
        "test_size": probe["test_size"], "batch_size": probe["batch_size"], "seed": probe["seed"],
    }  # fmt: skip
    # the kNN bank is the whole train subset; the linear probe holds val_size out of it
    knn = KNNEvalCallback(**common, **probe["knn"])
    linear = LinearProbeCallback(**common, val_size=probe["val_size"], **probe["linear"])
    with isolated_evaluation(model):
        metrics = knn.evaluate(model.eval_backbone)
        metrics.update(linear.evaluate(model.eval_backbone))
    best = metrics.pop("probe/linear_best_config")
    locations = {"checkpoint": str(cfg.ckpt_path), "probe dataset": common["dataset"]}
    print(format_summary(metrics, {**locations, "linear best config": best}))
    return metrics


@hydra.main(version_base="1.3", config_path="../configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        evaluate(cfg)


if __name__ == "__main__":
    main()
