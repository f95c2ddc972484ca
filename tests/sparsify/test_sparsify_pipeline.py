"""experiments/sparsify.py end to end: prune a trained checkpoint, fine-tune, save, reload."""

import json
from pathlib import Path

import pytest
import torch
from helpers import compose_config

from experiments.checkpoints import module_from_checkpoint
from experiments.errors import UserFacingError
from experiments.sparsify import sparsify
from lightning_modules.sparse_cnn_module import SparseCNNLitModule

FAST = [
    "logger=csv",
    "calibration.images=128",
    "report.latency_repeats=2",
    "report.latency_batch_sizes=[1,8]",
    "+trainer.limit_test_batches=1",
]


def test_prune_finetune_save_reload(lenet_checkpoint: Path, tmp_path: Path) -> None:
    cfg = compose_config(
        "sparsify",
        [*FAST, f"source_ckpt={lenet_checkpoint}", "finetune.epochs=1",
         "+trainer.limit_train_batches=3", "trainer.limit_val_batches=1"],
        tmp_path,
    )  # fmt: skip
    result = sparsify(cfg)
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["param_sparsity"] == pytest.approx(result["param_sparsity"])
    for key in ("dense_test_acc", "pruned_test_acc", "finetuned_test_acc", "flop_sparsity",
                "channel_sparsity", "latency_ms_dense_b1", "speedup_b8"):  # fmt: skip
        assert key in saved
    assert 0 < saved["param_sparsity"] < 100 and saved["pruned_params"] < saved["dense_params"]
    assert (tmp_path / "kept_channels.png").stat().st_size > 1000
    assert len(saved["calibration_indices"]) == 128

    # the slim checkpoint rebuilds without the original network, two ways
    slim = SparseCNNLitModule.load_from_checkpoint(tmp_path / "pruned.ckpt")
    rebuilt, run_config = module_from_checkpoint(tmp_path / "pruned.ckpt")
    assert run_config["model"]["widths"] == list(slim.hparams.widths)
    x = torch.randn(4, 1, 28, 28)
    slim.eval(), rebuilt.eval()
    torch.testing.assert_close(slim(x), rebuilt(x), rtol=0, atol=0)
    n_params = sum(p.numel() for p in slim.net.parameters())
    assert n_params == saved["pruned_params"]
    kept = slim.hparams.kept_indices
    assert set(kept) == {layer["producer"] for layer in saved["layers"]}


def test_unsupported_source_architecture(tmp_path: Path) -> None:
    cfg = compose_config("sparsify", [*FAST, "source_ckpt=/no/such/file.ckpt"], tmp_path)
    with pytest.raises(UserFacingError, match="does not exist"):
        sparsify(cfg)


def test_bad_prune_flags_are_rejected(lenet_checkpoint: Path, tmp_path: Path) -> None:
    overrides = [*FAST, f"source_ckpt={lenet_checkpoint}", "prune.mode=budget",
                 "prune.target_param_sparsity=1.5"]  # fmt: skip
    with pytest.raises(ValueError, match=r"target_param_sparsity must lie in \[0, 1\)"):
        sparsify(compose_config("sparsify", overrides, tmp_path))
