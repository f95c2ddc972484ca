"""Patch-PCA pictures and CLS attention maps."""

import pytest
import torch

from lightning_modules.components.feature_pictures import cls_attention_maps, pca_rgb
from lightning_modules.components.vit import DINOv2Backbone


def test_pca_rgb_shape_range_and_foreground() -> None:
    gen = torch.Generator().manual_seed(0)
    b, h, w, d = 2, 6, 6, 16
    tokens = 0.1 * torch.randn(b, h, w, d, generator=gen)
    tokens[:, 2:4, 2:4, 0] += 5.0  # a bright object in the middle; the border is background
    rgb, fg = pca_rgb(tokens.reshape(b, h * w, d), (h, w))
    assert rgb.shape == (b, 3, h, w) and fg.shape == (b, h, w)
    assert rgb.min() >= 0 and rgb.max() <= 1
    expected = torch.zeros(h, w, dtype=torch.bool)
    expected[2:4, 2:4] = True
    assert torch.equal(fg, expected.expand(b, h, w))
    assert rgb[:, :, ~expected].abs().max() == 0  # background is black
    rgb_all, fg_all = pca_rgb(tokens.reshape(b, h * w, d), (h, w), foreground_threshold=None)
    assert fg_all.all() and rgb_all.amax(dim=(0, 2, 3)).min() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="grid"):
        pca_rgb(tokens.reshape(b, h * w, d), (5, 6))


@pytest.mark.parametrize("registers", [0, 4])
def test_cls_attention_maps_match_a_manual_softmax(registers: int) -> None:
    torch.manual_seed(0)
    backbone = DINOv2Backbone(
        None, img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2,
        num_register_tokens=registers,
    ).eval()  # fmt: skip
    x = torch.randn(3, 3, 16, 16)
    maps = cls_attention_maps(backbone, x)
    assert maps.shape == (3, 2, 4, 4)
    # manual: last-block input, norm1, qkv, softmax over all 1+R+N keys
    tokens = backbone.prepare_tokens(x)
    tokens = backbone.vit.blocks[0](tokens)
    block = backbone.vit.blocks[1]
    qkv = block.attn.qkv(block.norm1(tokens)).reshape(3, -1, 3, 2, 16).permute(2, 0, 3, 1, 4)
    attn = (qkv[0] @ qkv[1].transpose(-2, -1) * 16**-0.5).softmax(-1)
    expected = attn[:, :, 0, 1 + registers :].reshape(3, 2, 4, 4)
    torch.testing.assert_close(maps, expected)
    assert (maps.sum(dim=(2, 3)) <= 1 + 1e-6).all()
    assert not any(h._forward_pre_hooks for h in backbone.modules())  # the hook is removed


def test_callback_pictures_are_unit_range_grids(tiny_backbone) -> None:
    from callbacks.feature_pictures import FeaturePicturesCallback

    callback = FeaturePicturesCallback(
        dataset="digits", data_dir="unused", num_images=3, display_size=32
    )
    pictures = callback.pictures(tiny_backbone)
    # 3 rows of 32 px tiles, padding 1: PCA has input + RGB, attention input + 2 heads
    assert pictures["pca"].shape == (3, 3 * 33 + 1, 2 * 33 + 1)
    assert pictures["attention"].shape == (3, 3 * 33 + 1, 3 * 33 + 1)
    assert all(float(p.min()) >= 0.0 and float(p.max()) <= 1.0 for p in pictures.values())
