"""Entropic sparsification of a trained CNN: ``python experiments/sparsify.py experiment=NAME``.

Load a trained classifier checkpoint (``source_ckpt=...``; if null, the dense network is trained
first with the config's data/model/trainer) → prune layer by layer (CPU) → test → optional
fine-tune with Lightning → test → save a slim checkpoint, a JSON report and a kept-channels chart.
Reported: parameter, channel and FLOP sparsity, accuracy of the dense network and of the pruned
one before and after fine-tuning, and CPU latency dense vs pruned.
"""

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from experiments.checkpoints import module_from_checkpoint, save_module_checkpoint
from experiments.errors import UserFacingError, exit_on_user_error
from experiments.instantiate import apply_runtime_settings, close_loggers, instantiate_loggers
from experiments.plots import kept_channels_chart
from experiments.summary import format_summary
from experiments.timing import median_latency_ms
from lightning_modules.components.sparse.channel_surgery import widths_of
from lightning_modules.components.sparse.counting import SparsityReport, sparsity_report
from lightning_modules.components.sparse.pipeline import entropic_sparsify
from lightning_modules.components.sparse.prunable_pairs import expected_input_shape
from lightning_modules.components.sparse.prune_config import PruneConfig
from lightning_modules.sparse_cnn_module import SparseCNNLitModule

# report.headline → the result key shown first and used as the x axis of sparsity curves
HEADLINE_KEYS = {
    "params": "param_sparsity",
    "channels": "channel_sparsity",
    "flops": "flop_sparsity",
}

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))


def sparsify(cfg: DictConfig) -> dict[str, Any]:
    """Run the whole pipeline; returns the report that is also written to ``result.json``."""
    apply_runtime_settings(cfg)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    prune_cfg = PruneConfig(**OmegaConf.to_container(cfg.prune, resolve=True))
    if cfg.report.headline not in HEADLINE_KEYS:
        raise UserFacingError(
            f"report.headline must be one of {sorted(HEADLINE_KEYS)}, got {cfg.report.headline!r}"
        )
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    loggers = instantiate_loggers(cfg, None)
    failed = True
    try:
        dense = _dense_module(cfg, datamodule, out)
        result = {"dense_test_acc": _test_acc(cfg, dense, datamodule)}
        calib, calib_idx = _calibration_images(cfg, datamodule)
        pruned_net, layers = entropic_sparsify(
            dense.net, calib, prune_cfg, widths_from=cfg.get("widths_from")
        )
        counts = sparsity_report(pruned_net, dense.net, expected_input_shape(dense.net))
        module = _sparse_module(cfg, pruned_net, layers, counts)
        result.update(_counts(counts))
        result["headline"] = cfg.report.headline
        result["headline_sparsity"] = result[HEADLINE_KEYS[cfg.report.headline]]
        result["pruned_test_acc"] = _test_acc(cfg, module, datamodule)
        if cfg.finetune.epochs > 0:
            _finetune(cfg, module, datamodule, loggers)
            result["finetuned_test_acc"] = _test_acc(cfg, module, datamodule)
        result.update(_latency(cfg, dense.net, module.net))
        result["layers"] = [asdict(layer) for layer in layers]
        result["calibration_indices"] = calib_idx
        result["prune"] = asdict(prune_cfg)
        _save(cfg, module, result, out, loggers)
        failed = False
    finally:
        close_loggers(loggers, failed)
    scalars = {k: v for k, v in result.items() if isinstance(v, float)}
    print(format_summary(scalars, {"pruned checkpoint": str(out / "pruned.ckpt")}))
    return result


def _dense_module(
    cfg: DictConfig, datamodule: L.LightningDataModule, out: Path
) -> L.LightningModule:
    """The trained dense classifier: from ``source_ckpt``, or trained here with cfg.trainer."""
    if cfg.get("source_ckpt"):
        module, _ = module_from_checkpoint(cfg.source_ckpt)
        return module
    module = instantiate(cfg.model)
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    trainer.fit(module, datamodule=datamodule)
    return module


def _test_acc(
    cfg: DictConfig, module: L.LightningModule, datamodule: L.LightningDataModule
) -> float:
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    metrics = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    return 100.0 * metrics["test/acc"]


def _calibration_images(cfg: DictConfig, datamodule) -> tuple[torch.Tensor, list[int]]:
    """A fixed, seeded subset of the training split, without augmentation (spec §2.8)."""
    images = datamodule.data_train.images
    n = min(cfg.calibration.images, len(images))
    idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(cfg.seed))[:n]
    return images[idx], idx.tolist()


def _sparse_module(
    cfg: DictConfig, pruned_net, layers, counts: SparsityReport
) -> SparseCNNLitModule:
    module = SparseCNNLitModule(
        arch=type(pruned_net).__name__,
        widths=widths_of(pruned_net),
        in_channels=expected_input_shape(pruned_net)[0],
        num_classes=cfg.model.num_classes,
        optimizer=instantiate(cfg.finetune.optimizer),
        final_lr_factor=cfg.finetune.final_lr_factor,
        kept_indices={layer.producer: layer.kept for layer in layers},
        sparsity={
            "params": counts.param_sparsity,
            "channels": counts.channel_sparsity,
            "flops": counts.flop_sparsity,
        },
    )
    module.net.load_state_dict(pruned_net.state_dict())
    return module


def _counts(report: SparsityReport) -> dict[str, Any]:
    return {
        "param_sparsity": report.param_sparsity,
        "channel_sparsity": report.channel_sparsity,
        "flop_sparsity": report.flop_sparsity,
        "dense_params": report.reference.params,
        "pruned_params": report.counts.params,
        "dense_macs": report.reference.macs,
        "pruned_macs": report.counts.macs,
    }


def _finetune(cfg: DictConfig, module, datamodule, loggers) -> None:
    """A fresh ``fit`` on the slim network (structure changed: new optimizer and schedule)."""
    trainer = instantiate(
        cfg.trainer, max_epochs=cfg.finetune.epochs, max_steps=-1, logger=loggers or False,
        enable_checkpointing=False,
    )  # fmt: skip
    trainer.fit(module, datamodule=datamodule)


def _latency(cfg: DictConfig, dense_net, pruned_net) -> dict[str, float]:
    if not cfg.report.latency:
        return {}
    shape = expected_input_shape(dense_net)
    result = {}
    for batch in cfg.report.latency_batch_sizes:
        for name, net in (("dense", dense_net), ("pruned", pruned_net)):
            result[f"latency_ms_{name}_b{batch}"] = median_latency_ms(
                net, shape, batch, repeats=cfg.report.latency_repeats
            )
        result[f"speedup_b{batch}"] = (
            result[f"latency_ms_dense_b{batch}"] / result[f"latency_ms_pruned_b{batch}"]
        )
    return result


def _save(cfg: DictConfig, module, result: dict[str, Any], out: Path, loggers) -> None:
    """Slim checkpoint (rebuildable from its hparams), result.json and the kept-channels chart."""
    model_cfg = {
        "_target_": f"{SparseCNNLitModule.__module__}.{SparseCNNLitModule.__name__}",
        **{k: v for k, v in module.hparams.items()},
        "optimizer": OmegaConf.to_container(cfg.finetune.optimizer, resolve=True),
    }
    run_config = {**OmegaConf.to_container(cfg, resolve=True), "model": model_cfg}
    save_module_checkpoint(module, out / "pruned.ckpt", run_config)
    (out / "result.json").write_text(json.dumps(result, indent=2))
    layers = result["layers"]
    chart = kept_channels_chart(
        [layer["producer"] for layer in layers],
        [layer["n_channels"] for layer in layers],
        [layer["n_kept"] for layer in layers],
        out / "kept_channels.png",
        f"{type(module.net).__name__}: {result['headline_sparsity']:.1f}% "
        f"{result['headline']} removed",
    )
    scalars = {f"sparsify/{k}": v for k, v in result.items() if isinstance(v, float | int)}
    for logger in loggers:
        logger.log_metrics(scalars)
        if hasattr(logger, "log_image"):
            logger.log_image("sparsify/kept_channels", [str(chart)])


@hydra.main(version_base="1.3", config_path="../configs", config_name="sparsify")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        sparsify(cfg)


if __name__ == "__main__":
    main()
