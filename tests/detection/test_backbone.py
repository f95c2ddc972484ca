"""Backbones (decision P4): ViT simple pyramid shapes, DINOv2 checkpoint loading, timm maps."""

from pathlib import Path

import pytest
import torch

from lightning_modules.components.detection.backbone import TimmBackbone, ViTPyramidBackbone
from lightning_modules.components.detection.neck import ChannelMapper
from lightning_modules.components.vit import DINOv2Backbone

VIT = {"embed_dim": 32, "depth": 1, "num_heads": 2, "patch_size": 8}


def test_vit_pyramid_strides_and_stride4() -> None:
    backbone = ViTPyramidBackbone(**VIT, img_size=64, with_stride4=True)
    maps = backbone(torch.randn(2, 3, 64, 96))
    assert [tuple(m.shape) for m in maps] == [(2, 8, 32, 48), (2, 16, 16, 24), (2, 32, 8, 12),
                                              (2, 32, 4, 6)]  # fmt: skip
    assert backbone.strides == [2, 4, 8, 16] and backbone.out_channels == [8, 16, 32, 32]
    assert backbone.size_divisibility == 16
    feats = ChannelMapper(backbone.out_channels[-3:], 32, num_levels=4, groups=8)(
        maps, torch.zeros(2, 64, 96, dtype=torch.bool)
    )
    assert feats.spatial_shapes.tolist() == [[16, 24], [8, 12], [4, 6], [2, 3]]
    assert feats.src.shape == (2, 384 + 96 + 24 + 6, 32) and feats.stride4.shape == (2, 8, 32, 48)
    assert feats.level_start_index.tolist() == [0, 384, 480, 504]
    torch.testing.assert_close(feats.valid_ratios, torch.ones(2, 4, 2))


def _dinov2_checkpoint(path: Path, img_size: int = 32, **arch) -> DINOv2Backbone:
    torch.manual_seed(1)
    teacher = DINOv2Backbone(img_size=img_size, **{**VIT, **arch})
    state = {f"teacher.backbone.{k}": v for k, v in teacher.state_dict().items()}
    state |= {f"student.backbone.{k}": torch.zeros_like(v) for k, v in teacher.state_dict().items()}
    torch.save({"state_dict": state, "global_step": 7}, path)
    return teacher


def test_loads_dinov2_teacher_weights(tmp_path: Path) -> None:
    path = tmp_path / "dinov2.ckpt"
    teacher = _dinov2_checkpoint(path, img_size=32)
    backbone = ViTPyramidBackbone(**VIT, img_size=64, checkpoint=str(path))
    own = backbone.vit.state_dict()
    for key, value in teacher.state_dict().items():
        if key != "vit.pos_embed":
            assert torch.equal(own[key], value), key
    assert own["vit.pos_embed"].shape[1] == 1 + 8 * 8  # resampled from a 4x4 grid
    with pytest.raises(ValueError, match="prefix"):
        ViTPyramidBackbone(**VIT, checkpoint=str(path), checkpoint_prefix="model.backbone.")
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        ViTPyramidBackbone(**VIT, checkpoint=str(tmp_path / "missing.ckpt"))
    wrong = tmp_path / "wide.ckpt"
    _dinov2_checkpoint(wrong, embed_dim=48)
    with pytest.raises(ValueError, match="does not fit"):
        ViTPyramidBackbone(**VIT, checkpoint=str(wrong))


def test_timm_backbones_return_nchw() -> None:
    resnet = TimmBackbone("resnet18", out_indices=(2, 3, 4))
    maps = resnet(torch.randn(1, 3, 64, 64))
    assert [m.shape[1] for m in maps] == resnet.out_channels == [128, 256, 512]
    assert resnet.strides == [8, 16, 32] and maps[0].shape[-2:] == (8, 8)
    swin = TimmBackbone("swin_tiny_patch4_window7_224", embed_dim=16, depths=(1, 1, 1, 1),
                        num_heads=(1, 1, 1, 1), dynamic_img_size=True)  # fmt: skip
    maps = swin(torch.randn(1, 3, 224, 224))  # timm Swin features are NHWC
    assert [tuple(m.shape[1:]) for m in maps] == [(32, 28, 28), (64, 14, 14), (128, 7, 7)]


def test_valid_ratios_follow_padding() -> None:
    maps = [torch.randn(1, 8, 16, 16), torch.randn(1, 8, 8, 8), torch.randn(1, 8, 4, 4)]
    pad_mask = torch.zeros(1, 64, 64, dtype=torch.bool)
    pad_mask[:, :, 32:] = True  # right half is padding
    feats = ChannelMapper([8, 8, 8], 16, num_levels=4, groups=4)(maps, pad_mask)
    torch.testing.assert_close(feats.valid_ratios[0, :, 0], torch.full((4,), 0.5))
    torch.testing.assert_close(feats.valid_ratios[0, :, 1], torch.ones(4))
    assert feats.pad_mask[0, :256].view(16, 16)[:, 8:].all()
