"""Parameter-group membership: layer decay, patch-embed ×0.2, no-wd set, last layer (§5.1)."""

import pytest
import torch
from torch import nn

from lightning_modules.components.heads import DINOHead
from lightning_modules.components.param_groups import build_param_groups, param_multipliers
from lightning_modules.components.vit import DINOv2Backbone

DEPTH, DECAY = 3, 0.9


@pytest.fixture(scope="module")
def groups() -> dict[str, dict]:
    backbone = DINOv2Backbone(
        embed_dim=16, depth=DEPTH, num_heads=2, patch_size=4, img_size=16, num_register_tokens=4
    )
    student = nn.ModuleDict(
        {
            "backbone": backbone,
            "dino_head": DINOHead(16, 32, hidden_dim=8, bottleneck_dim=4),
            "ibot_head": DINOHead(16, 32, hidden_dim=8, bottleneck_dim=4),
        }
    )
    built = build_param_groups(student, num_blocks=DEPTH, layer_decay=DECAY)
    by_name = {}
    for group in built:
        for name, param in zip(group["param_names"], group["params"], strict=True):
            assert student.get_parameter(name) is param
            by_name[name] = group
    assert len(by_name) == sum(1 for _ in student.parameters())  # every parameter exactly once
    torch.optim.AdamW(built, lr=1.0)  # the groups are accepted as they are
    return by_name


def test_layer_wise_decay(groups: dict[str, dict]) -> None:
    top = DEPTH + 1
    embeddings = ["backbone.vit.pos_embed", "backbone.vit.cls_token", "backbone.vit.reg_token"]
    for name in [*embeddings, "backbone.mask_token"]:
        assert groups[name]["lr_multiplier"] == pytest.approx(DECAY**top)
    for i in range(DEPTH):
        group = groups[f"backbone.vit.blocks.{i}.attn.qkv.weight"]
        assert group["lr_multiplier"] == pytest.approx(DECAY ** (top - (i + 1)))
    assert groups["backbone.vit.norm.weight"]["lr_multiplier"] == 1.0
    assert groups["dino_head.mlp.0.weight"]["lr_multiplier"] == 1.0


def test_patch_embed_extra_multiplier(groups: dict[str, dict]) -> None:
    for name in ("backbone.vit.patch_embed.proj.weight", "backbone.vit.patch_embed.proj.bias"):
        assert groups[name]["lr_multiplier"] == pytest.approx(0.2 * DECAY ** (DEPTH + 1))


def test_weight_decay_membership(groups: dict[str, dict]) -> None:
    no_wd = [
        "backbone.vit.blocks.0.attn.qkv.bias",
        "backbone.vit.blocks.1.norm1.weight",
        "backbone.vit.blocks.2.ls1.gamma",
        "backbone.vit.norm.bias",
        "dino_head.mlp.0.bias",
    ]
    with_wd = [
        "backbone.vit.pos_embed",
        "backbone.vit.cls_token",
        "backbone.vit.reg_token",
        "backbone.mask_token",
        "backbone.vit.blocks.0.mlp.fc1.weight",
        "dino_head.last_layer.parametrizations.weight.original0",  # prototype magnitude g
        "dino_head.last_layer.parametrizations.weight.original1",
    ]
    assert all(groups[n]["wd_multiplier"] == 0.0 for n in no_wd)
    assert all(groups[n]["wd_multiplier"] == 1.0 for n in with_wd)


def test_last_layer_flag(groups: dict[str, dict]) -> None:
    flagged = {n for n, g in groups.items() if g["is_last_layer"]}
    assert flagged == {
        f"{head}.last_layer.parametrizations.weight.original{i}"
        for head in ("dino_head", "ibot_head")
        for i in (0, 1)
    }


def test_frozen_parameters_excluded_and_single_name_rule() -> None:
    model = nn.ModuleDict({"backbone": nn.Linear(2, 2), "head": nn.Linear(2, 2)})
    model["head"].weight.requires_grad_(False)
    names = {n for g in build_param_groups(model, num_blocks=1) for n in g["param_names"]}
    assert "head.weight" not in names and "head.bias" in names
    mults = param_multipliers("backbone.blocks.0.norm2.weight", True, 12, 0.9, 0.2)
    expected = {"lr_multiplier": pytest.approx(0.9**12), "wd_multiplier": 0.0}
    assert mults == {**expected, "is_last_layer": False}
