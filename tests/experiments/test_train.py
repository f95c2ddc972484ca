"""End-to-end runs of experiments/train.py's ``train`` and experiments/evaluate.py's ``evaluate``."""

from pathlib import Path

import pytest
import torch
from helpers import compose_config

from callbacks.run_metadata import WANDB_ID_FILE
from experiments.evaluate import evaluate
from experiments.train import train

MODELS = {
    "lenet5": [],
    "lenet5_caffe": [],
    "vgg16_bn": ["data.image_size=32", "data.channels=3"],
    "resnet18": ["data.image_size=32", "data.channels=3"],
}


@pytest.mark.parametrize("model", sorted(MODELS))
def test_fast_dev_run(model: str, tmp_path: Path) -> None:
    overrides = [f"model={model}", "debug=fast_dev_run", "data.batch_size=8", *MODELS[model]]
    metrics = train(compose_config("train", overrides, tmp_path))
    assert torch.isfinite(torch.tensor(metrics["train/loss_step"]))
    assert "val/acc" in metrics


def test_train_checkpoints_logs_and_evaluates(tmp_path: Path, capsys) -> None:
    cfg = compose_config(
        "train", ["debug=limit", "callbacks.periodic_checkpoint.every_n_train_steps=3"],
        tmp_path / "run", logger="wandb_csv",
    )  # fmt: skip
    metrics = train(cfg)
    ckpt_dir = tmp_path / "run" / "checkpoints"
    names = {p.name for p in ckpt_dir.iterdir()}
    assert "last.ckpt" in names and WANDB_ID_FILE in names
    assert any(n.startswith("best-") for n in names) and any(n.startswith("step") for n in names)
    assert not any(n.endswith(".tmp") for n in names)
    last = torch.load(ckpt_dir / "last.ckpt", weights_only=True)
    assert last["global_step"] == 10 and last["run_config"]["data"]["dataset"] == "digits"
    assert 0.0 <= metrics["test/acc"] <= 1.0
    assert (tmp_path / "run" / "wandb").is_dir() and (tmp_path / "run" / "csv").is_dir()
    summary = capsys.readouterr().out
    assert "test/acc" in summary and "best checkpoint" in summary

    best = next(ckpt_dir.glob("best-*.ckpt"))
    eval_cfg = compose_config("eval", [f"ckpt_path={best}"], tmp_path / "eval")
    eval_metrics = evaluate(eval_cfg)
    # the full test split (evaluate) vs 2 test batches (debug=limit): both well-defined accuracies
    assert 0.0 <= eval_metrics["test/acc"] <= 1.0
    assert eval_metrics["test/loss"] > 0
