"""Every experiment preset composes, and its data, model, callbacks, loggers and trainer instantiate."""

from pathlib import Path

import lightning as L
import pytest
from helpers import compose_config
from hydra.utils import instantiate
from omegaconf import OmegaConf

from experiments.compose import CONFIG_DIR
from experiments.instantiate import instantiate_callbacks, instantiate_loggers
from lightning_modules.components.sparse.prune_config import PruneConfig

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


def test_experiments_exist() -> None:
    for name in ["lenet5_digits", "lenet5_mnist", "lenet5caffe_mnist", "vgg16_cifar10",
                 "resnet18_cifar10"]:  # fmt: skip
        assert name in EXPERIMENTS


@pytest.mark.parametrize("experiment", [e for e in EXPERIMENTS if e.startswith("sparsify_")])
def test_sparsify_experiment_instantiates(experiment: str, tmp_path: Path) -> None:
    cfg = compose_config("sparsify", [f"experiment={experiment}"], tmp_path)
    assert isinstance(instantiate(cfg.data), L.LightningDataModule)
    assert isinstance(instantiate(cfg.model), L.LightningModule)
    assert PruneConfig(**OmegaConf.to_container(cfg.prune, resolve=True)).selector == "entropic"
    assert callable(instantiate(cfg.finetune.optimizer))


@pytest.mark.parametrize("experiment", [e for e in EXPERIMENTS if not e.startswith("sparsify_")])
def test_experiment_instantiates(experiment: str, tmp_path: Path) -> None:
    cfg = compose_config("train", [f"experiment={experiment}"], tmp_path, logger="wandb_csv")
    assert cfg.experiment_name == experiment
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    assert isinstance(datamodule, L.LightningDataModule)
    assert isinstance(model, L.LightningModule)
    callbacks = instantiate_callbacks(cfg, {})
    loggers = instantiate_loggers(cfg, None)
    assert {type(lg).__name__ for lg in loggers} == {"WandbLogger", "CSVLogger"}
    assert len(callbacks) >= 3  # best + periodic checkpoints + run metadata
    # gpu presets are composed but instantiated with a CPU trainer here
    trainer_cfg = cfg.trainer.copy()
    trainer_cfg.accelerator, trainer_cfg.precision = "cpu", "32-true"
    trainer = instantiate(trainer_cfg, callbacks=callbacks, logger=False)
    assert trainer.max_epochs == cfg.trainer.max_epochs


def test_data_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATA_DIR", "/some/where")
    cfg = compose_config("train", [], tmp_path)
    assert cfg.data.data_dir == "/some/where"
    monkeypatch.delenv("DATA_DIR")
    cfg = compose_config("train", [], tmp_path)
    assert cfg.paths.data_dir == f"{cfg.paths.root_dir}/data"


def test_default_experiment_is_embedded(tmp_path: Path) -> None:
    cfg = compose_config("train", [], tmp_path)
    assert cfg.data.dataset == "digits"  # needs no download: `make train` works offline
