"""DDP on 2 CPU processes (gloo) agrees with one process on the same global batches."""

from pathlib import Path

import lightning as L
import torch
from helpers import compose_config
from hydra.utils import instantiate

from experiments.train import train

COMMON = [
    "trainer=deterministic",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=10",
    "callbacks.periodic_checkpoint.every_n_train_steps=10",
    "data.val_size=288",  # divisible by 2: no padded duplicates in the sharded validation set
    "model.optimizer.lr=0.01",
    "test=false",
]


def test_ddp_two_processes_matches_single_process(tmp_path: Path) -> None:
    single = train(compose_config("train", [*COMMON, "data.batch_size=32"], tmp_path / "single"))
    ddp_overrides = [
        *COMMON,
        "data.batch_size=16",  # per process: the same 32-image global batch
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.deterministic=true",
        "+trainer.strategy.start_method=spawn",
        "trainer.strategy.process_group_backend=gloo",
    ]
    ddp = train(compose_config("train", ddp_overrides, tmp_path / "ddp"))

    assert ddp["val/acc"] == single["val/acc"]
    assert abs(ddp["val/loss"] - single["val/loss"]) < 1e-5
    a = torch.load(tmp_path / "single/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "ddp/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4, msg=key)
    # training moved the weights, so agreeing is not trivially true
    L.seed_everything(42)
    initial = instantiate(compose_config("train", COMMON, tmp_path / "init").model).state_dict()
    assert (a["net.features.0.weight"] - initial["net.features.0.weight"]).abs().max() > 1e-3
