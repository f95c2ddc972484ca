"""Head-complete checkpoints (D6): contents, continued pretraining, and distillation from them (D7)."""

from pathlib import Path

import pytest
import torch
from helpers import compose_config
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from experiments.train import train
from lightning_modules.dinov2_checkpoint import DINOv2CheckpointError, PrototypeMismatchError
from lightning_modules.dinov2_distill_module import DINOv2DistillLitModule

HEAD = "{out_dim: 64, hidden_dim: 64, bottleneck_dim: 32, nlayers: 2}"


@pytest.fixture(scope="module")
def pretrained(tiny, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """last.ckpt of a 2-step tiny pretraining run with a separate iBOT head (centering)."""
    out = tmp_path_factory.mktemp("pretrain")
    overrides = [*tiny, "trainer.max_steps=2", "model.ibot.separate_head=true"]
    train(compose_config("train", overrides, out))
    return out / "checkpoints" / "last.ckpt"


def test_checkpoint_holds_student_teacher_heads_and_centers(pretrained: Path) -> None:
    checkpoint = torch.load(pretrained, weights_only=True)
    state = checkpoint["state_dict"]
    for model in ("student", "teacher"):
        for part in ("backbone.vit.pos_embed", "backbone.mask_token", "dino_head.mlp.0.weight",
                     "ibot_head.last_layer.parametrizations.weight.original1"):  # fmt: skip
            assert f"{model}.{part}" in state, f"{model}.{part}"
    assert state["dino_targets.center"].shape == (1, 64)
    assert state["ibot_targets.center"].abs().sum() > 0
    assert (
        checkpoint["optimizer_states"]
        and checkpoint["run_config"]["model"]["ibot"]["separate_head"]
    )


def test_continue_pretraining_from_checkpoint(pretrained: Path, tiny, tmp_path: Path) -> None:
    """init_checkpoint loads student, teacher and centers at a new resolution; step restarts."""
    overrides = [*tiny, "trainer.max_steps=1", "model.ibot.separate_head=true",
                 f"model.init_checkpoint={pretrained}", "data.crops.global_size=24",
                 "data.image_size=24", "model.require_init_checkpoint=true"]  # fmt: skip
    cfg = compose_config("train", overrides, tmp_path)
    model = instantiate(cfg.model)
    model.setup("fit")
    saved = torch.load(pretrained, weights_only=True)["state_dict"]
    state = model.state_dict()
    assert torch.equal(
        state["teacher.dino_head.mlp.0.weight"], saved["teacher.dino_head.mlp.0.weight"]
    )
    assert torch.equal(state["dino_targets.center"], saved["dino_targets.center"])
    assert state["student.backbone.vit.pos_embed"].shape == (1, 1 + 36, 32)  # 6x6 grid, resampled
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 1


def test_continue_pretraining_requires_a_head_complete_checkpoint(
    pretrained: Path, tiny, tmp_path: Path
) -> None:
    cfg = compose_config("train", [*tiny, "model.require_init_checkpoint=true"], tmp_path)
    with pytest.raises(DINOv2CheckpointError, match="model.init_checkpoint"):
        instantiate(cfg.model).setup("fit")
    backbone_only = torch.load(pretrained, weights_only=True)
    backbone_only["state_dict"] = {
        k: v for k, v in backbone_only["state_dict"].items() if k.startswith("student.backbone.")
    }
    torch.save(backbone_only, tmp_path / "backbone_only.ckpt")
    model = instantiate(
        compose_config(
            "train", [*tiny, f"model.init_checkpoint={tmp_path / 'backbone_only.ckpt'}"], tmp_path
        ).model
    )
    with pytest.raises(DINOv2CheckpointError, match="not a head-complete"):
        model.setup("fit")


def _distill(tiny, pretrained: Path, *extra: str) -> list[str]:
    return [
        *tiny,
        "experiment=dinov2_distill_tiny",
        f"model.teacher_checkpoint={pretrained}",
        "model.teacher_backbone.embed_dim=32",
        "model.teacher_backbone.depth=2",
        "model.teacher_backbone.num_heads=2",
        f"model.teacher_heads.dino={HEAD}",
        f"model.teacher_heads.ibot={HEAD}",
        "model.backbone.embed_dim=16",
        "model.backbone.depth=1",
        "model.ibot.separate_head=true",
        *extra,
    ]


def test_distillation_run(pretrained: Path, tiny, tmp_path: Path) -> None:
    cfg = compose_config("train", _distill(tiny, pretrained, "trainer.max_steps=2"), tmp_path)
    metrics = train(cfg)
    assert metrics["train/loss_ibot"] > 0  # all patch tokens, no masks
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    saved = torch.load(pretrained, weights_only=True)["state_dict"]
    for key in ("teacher.backbone.vit.blocks.0.attn.qkv.weight", "teacher.ibot_head.mlp.0.weight"):
        assert torch.equal(state[key], saved[key]), "the distillation teacher must stay frozen"
    assert not torch.equal(
        state["student_ema.dino_head.mlp.0.weight"], state["student.dino_head.mlp.0.weight"]
    )
    model = instantiate(cfg.model)
    assert isinstance(model, DINOv2DistillLitModule)
    assert model.eval_backbone is model.student_ema.backbone
    assert model.student.backbone.drop_path_rate == 0.0


def test_distillation_with_mismatched_prototypes_errors(
    pretrained: Path, tiny, tmp_path: Path
) -> None:
    student_k = _distill(tiny, pretrained, "model.dino_head.out_dim=32")
    with pytest.raises(InstantiationException, match="student DINO head has 32 prototypes") as err:
        instantiate(compose_config("train", student_k, tmp_path).model)
    assert isinstance(err.value.__cause__, PrototypeMismatchError)
    # teacher config (and student) at K=32, but the checkpoint's teacher has 64 prototypes
    both = _distill(
        tiny, pretrained, "model.teacher_heads.dino.out_dim=32", "model.dino_head.out_dim=32"
    )
    model = instantiate(compose_config("train", both, tmp_path).model)
    with pytest.raises(PrototypeMismatchError, match="has 64 prototypes"):
        model.setup("fit")
