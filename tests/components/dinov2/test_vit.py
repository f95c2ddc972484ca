"""DINOv2Backbone: tokens, mask token, registers, parameter counts, drop-path (§13.1-3)."""

import pytest
import torch
from timm.layers import DropPath

from lightning_modules.components.vit import DINOv2Backbone, swiglu_hidden_dim


def tiny(**overrides) -> DINOv2Backbone:
    cfg = dict(embed_dim=32, depth=2, num_heads=2, patch_size=4, img_size=32)
    cfg.update(overrides)
    return DINOv2Backbone(**cfg).eval()


@pytest.mark.parametrize("registers", [0, 4])
def test_token_counts_tiny(registers: int) -> None:
    model = tiny(num_register_tokens=registers)
    out = model.forward_features(torch.randn(2, 3, 32, 32), return_prenorm=True)
    assert out["cls"].shape == (2, 32)
    assert out["reg"].shape == (2, registers, 32)
    assert out["patch"].shape == (2, 64, 32)  # 32/4 → 8x8
    assert out["prenorm"].shape == (2, 1 + registers + 64, 32)
    local = model.forward_features(torch.randn(3, 3, 16, 16))
    assert local["patch"].shape == (3, 16, 32)  # 16/4 → 4x4, pos-embed resampled


@pytest.mark.parametrize("registers", [0, 4])
def test_token_counts_patch14(registers: int) -> None:
    # Narrow and shallow: token bookkeeping depends only on the patch grid and registers.
    model = tiny(embed_dim=24, depth=1, patch_size=14, img_size=224, num_register_tokens=registers)
    with torch.no_grad():
        out = model.forward_features(torch.randn(1, 3, 224, 224), return_prenorm=True)
        local = model.forward_features(torch.randn(1, 3, 98, 98))
    assert out["prenorm"].shape[1] == 1 + registers + 256
    assert local["patch"].shape[1] == 49


def _first_block_input(model: DINOv2Backbone, x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    captured = {}
    handle = model.vit.blocks[0].register_forward_pre_hook(
        lambda _m, args: captured.setdefault("x", args[0].detach().clone())
    )
    with torch.no_grad():
        model.forward_features(x, masks)
    handle.remove()
    return captured["x"]


@pytest.mark.parametrize("registers", [0, 4])
def test_mask_token_plus_pos_embed_and_registers_without_pos_embed(registers: int) -> None:
    torch.manual_seed(0)
    model = tiny(num_register_tokens=registers)
    with torch.no_grad():  # non-trivial values so every term is visible
        model.mask_token.normal_()
        model.vit.pos_embed.normal_()
        model.vit.cls_token.normal_()
        if registers:
            model.vit.reg_token.normal_()
    x = torch.randn(2, 3, 32, 32)
    masks = torch.zeros(2, 64, dtype=torch.bool)
    masks[0, [0, 5, 63]] = True
    masks[1, 10:20] = True
    tokens = _first_block_input(model, x, masks)

    n_prefix = 1 + registers
    # pos_embed has a CLS slot without registers (reference layout), none with (timm _reg4).
    pos_patch = model.vit.pos_embed[0, -64:]
    patch_embed = model.vit.patch_embed(x).flatten(1, 2)  # (B, N, D)
    expected = torch.where(masks[..., None], model.mask_token, patch_embed) + pos_patch
    torch.testing.assert_close(tokens[:, n_prefix:], expected)
    masked = tokens[0, n_prefix + 5]
    torch.testing.assert_close(masked, model.mask_token[0] + pos_patch[5])
    if registers:
        torch.testing.assert_close(tokens[:, 1:n_prefix], model.vit.reg_token.expand(2, -1, -1))
        torch.testing.assert_close(tokens[:, 0], model.vit.cls_token[0].expand(2, -1))
    else:
        cls = model.vit.cls_token[0, 0] + model.vit.pos_embed[0, 0]
        torch.testing.assert_close(tokens[:, 0], cls.expand(2, -1))


def test_mask_token_is_zero_at_init_and_masks_change_output() -> None:
    model = tiny()
    assert torch.count_nonzero(model.mask_token) == 0
    x = torch.randn(1, 3, 32, 32)
    masks = torch.zeros(1, 64, dtype=torch.bool)
    masks[0, :8] = True
    with torch.no_grad():
        assert not torch.allclose(model(x), model.forward_features(x, masks)["cls"])


# Spec §2.1 counts (pos-embed at 224 / 518), in millions, for the timm body; the mask token
# (D parameters) is excluded, as ViT-B/14 at 224 (85.72M, not 85.73M) shows.
PARAM_COUNTS = {
    "vit_small_patch14_dinov2": (21.63, 22.06),
    "vit_base_patch14_dinov2": (85.72, 86.58),
    "vit_large_patch14_dinov2": (303.23, 304.37),
    "vit_giant_patch14_dinov2": (1134.77, 1136.48),
}


@pytest.mark.parametrize("arch", list(PARAM_COUNTS))
@pytest.mark.parametrize("size_index,img_size", [(0, 224), (1, 518)])
def test_parameter_counts(arch: str, size_index: int, img_size: int) -> None:
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = DINOv2Backbone(arch, img_size=img_size)
    n = sum(p.numel() for p in model.vit.parameters())
    assert round(n / 1e6, 2) == PARAM_COUNTS[arch][size_index]


def test_vit_small_real_build_matches_count_and_init() -> None:
    model = DINOv2Backbone("vit_small_patch14_dinov2", img_size=224, drop_path=0.3)
    assert round(sum(p.numel() for p in model.vit.parameters()) / 1e6, 2) == 21.63
    assert model.vit.pos_embed.shape == (1, 257, 384)
    gamma = model.vit.blocks[0].ls1.gamma
    torch.testing.assert_close(gamma, torch.full_like(gamma, 1e-5))


def test_swiglu_widths() -> None:
    assert swiglu_hidden_dim(1536) == 4096
    assert swiglu_hidden_dim(1024) == 2736
    with torch.device("meta"):
        giant = DINOv2Backbone("vit_giant_patch14_dinov2", img_size=224)
        large = DINOv2Backbone("vit_large_patch14_dinov2", img_size=224, ffn="swiglu")
    assert giant.vit.blocks[0].mlp.fc1.out_features == 2 * 4096
    assert large.vit.blocks[0].mlp.fc1.out_features == 2 * 2736
    assert large.vit.blocks[0].mlp.fc2.in_features == 2736
    small = tiny(embed_dim=48, ffn="swiglu")
    fc1 = small.vit.blocks[0].mlp.fc1
    assert fc1.out_features == 2 * swiglu_hidden_dim(48)
    # reference init for both halves of the packed layer (timm's GluMlp init is overridden)
    for half in fc1.weight.detach().chunk(2):
        assert abs(half.std().item() - 0.02) < 0.003
    assert torch.count_nonzero(fc1.bias) == 0


@pytest.mark.parametrize("rate", [0.0, 0.3])
def test_drop_path_is_uniform(rate: float) -> None:
    model = tiny(depth=4, drop_path=rate)
    for block in model.vit.blocks:
        for module in (block.drop_path1, block.drop_path2):
            if rate == 0:
                assert not isinstance(module, DropPath)
            else:
                assert isinstance(module, DropPath) and module.drop_prob == rate


def test_drop_path_uniform_on_timm_arch() -> None:
    with torch.device("meta"):
        model = DINOv2Backbone("vit_large_patch14_dinov2", img_size=224, drop_path=0.4)
    rates = {b.drop_path1.drop_prob for b in model.vit.blocks}
    rates |= {b.drop_path2.drop_prob for b in model.vit.blocks}
    assert rates == {0.4}


def test_image_size_must_be_multiple_of_patch() -> None:
    model = tiny()
    with pytest.raises(ValueError, match=r"30x30 .* patch size 4"):
        model(torch.randn(1, 3, 30, 30))
    with pytest.raises(ValueError, match="img_size 30"):
        tiny(img_size=30)


def test_intermediate_layers_and_forward() -> None:
    model = tiny(depth=3, num_register_tokens=4)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        layers = model.get_intermediate_layers(x, n=2)
        full = model.forward_features(x)
        assert len(layers) == 2
        patch, cls = layers[-1]
        assert patch.shape == (2, 64, 32) and cls.shape == (2, 32)
        torch.testing.assert_close(patch, full["patch"])
        torch.testing.assert_close(cls, full["cls"])
        torch.testing.assert_close(model(x), full["cls"])
        assert len(model.get_intermediate_layers(x, n=[0, 2])) == 2
