"""VGG-16-BN and ResNet-18 through experiments/sparsify.py on tiny data (narrowed widths)."""

from pathlib import Path

import pytest
from helpers import compose_config

from experiments.sparsify import sparsify
from lightning_modules.sparse_cnn_module import SparseCNNLitModule

TINY = [
    "logger=csv",
    "data.image_size=32",
    "data.channels=3",
    "data.batch_size=32",
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "+trainer.limit_test_batches=1",
    "calibration.images=32",
    "finetune.epochs=1",
    "prune.restarts=1",
    "prune.max_iter=20",
    "report.latency_repeats=1",
    "report.latency_batch_sizes=[2]",
]
NETS = {
    "vgg16_bn": "model.net.plan=[8,8,M,16,16,M,16,16,16,M,16,16,16,M,16,16,16,M]",
    "resnet18": "model.net.internal_widths=[8,8,8,8,8,8,8,8]",
}


@pytest.mark.parametrize("model", sorted(NETS))
def test_cifar_nets_prune_end_to_end(model: str, tmp_path: Path) -> None:
    cfg = compose_config("sparsify", [*TINY, f"model={model}", NETS[model]], tmp_path)
    result = sparsify(cfg)
    assert result["pruned_params"] < result["dense_params"]
    assert 0.0 <= result["finetuned_test_acc"] <= 100.0
    slim = SparseCNNLitModule.load_from_checkpoint(tmp_path / "pruned.ckpt")
    assert sum(p.numel() for p in slim.net.parameters()) == result["pruned_params"]
    if model == "resnet18":  # stage channels are residual-tied and kept (spec §3)
        assert [b.conv2.out_channels for b in slim.net.blocks] == [64, 64, 128, 128, 256, 256,
                                                                   512, 512]  # fmt: skip


def test_resnet18_joint_stage_pruning_end_to_end(tmp_path: Path) -> None:
    """``prune.resnet_stage=joint`` shrinks the residual stream; the slim checkpoint rebuilds it."""
    stage_widths = [8, 12, 16, 20]  # narrow streams keep the solver's Cholesky factors small
    overrides = [*TINY, "model=resnet18", NETS["resnet18"], "prune.resnet_stage=joint",
                 f"+model.net.stage_widths={stage_widths}"]  # fmt: skip
    result = sparsify(compose_config("sparsify", overrides, tmp_path))
    slim = SparseCNNLitModule.load_from_checkpoint(tmp_path / "pruned.ckpt")
    stages = [b.conv2.out_channels for b in slim.net.blocks[::2]]
    assert stages == [r["n_kept"] for r in result["layers"] if r["producer"].startswith("stage")]
    assert sum(stages) < sum(stage_widths)
    assert sum(p.numel() for p in slim.net.parameters()) == result["pruned_params"]
