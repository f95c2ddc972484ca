"""Image backbones returning multi-scale maps (spec §3.2, decision P4).

Every backbone returns a list of NCHW maps, finest first, and exposes ``out_channels``,
``strides`` and ``size_divisibility`` (input sides must be multiples of it). The channel mapper
uses the last three maps; an optional extra leading stride-4 map is for a mask head.

- ``ViTPyramidBackbone``: the project's DINOv2 ViT (``components/vit.py``) with a ViTDet simple
  feature pyramid (arXiv 2203.16527): from the stride-p patch map, ×2 transposed conv → p/2,
  identity → p, 2×2 max-pool → 2p. It loads this project's DINOv2 checkpoints.
- ``TimmBackbone``: any timm model with ``features_only=True`` (Swin, ResNet, ConvNeXt); it
  loads weights of the same timm architecture from a file (``checkpoint``), e.g. the classifier
  of ``experiments/benchmarks/detector_backbone_pretrain.py``.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

from lightning_modules.components.vit import DINOv2Backbone


def _prefixed_weights(path: str | Path, prefix: str, kind: str, hint: str) -> dict:
    """The tensors under ``prefix`` in a weights file (a dict with a ``state_dict``, or a bare
    state dict), with the prefix stripped.

    Raises ``FileNotFoundError`` naming the file and what to set (``hint``), and ``ValueError``
    listing the file's key roots when no key has the prefix.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{kind} {path} not found: set model.detector.backbone.checkpoint to {hint}"
        )
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint.get("state_dict", checkpoint)
    weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not weights:
        roots = sorted({".".join(k.split(".")[:2]) for k in state})[:8]
        raise ValueError(
            f"{path} has no weights under the prefix {prefix!r} (key roots: {roots}); "
            "set model.detector.backbone.checkpoint_prefix"
        )
    return weights


def load_dinov2_weights(
    backbone: DINOv2Backbone, path: str | Path, prefix: str = "teacher.backbone."
) -> None:
    """Loads the ``prefix``-ed weights of a Lightning checkpoint's ``state_dict`` into
    ``backbone``; the positional embedding is resampled when the grid size differs.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` when no key has the
    prefix or when weights are missing or mis-shaped (a different ViT architecture).
    """
    weights = _prefixed_weights(
        path, prefix, "DINOv2 checkpoint",
        "a checkpoint of experiments/train.py with a DINOv2 model, or null for random init",
    )  # fmt: skip
    vit = backbone.vit
    pos = weights.get("vit.pos_embed")
    if pos is not None and pos.shape != vit.pos_embed.shape:
        n_prefix = 0 if vit.no_embed_class else vit.num_prefix_tokens
        weights["vit.pos_embed"] = resample_abs_pos_embed(
            pos, new_size=list(vit.patch_embed.grid_size), num_prefix_tokens=n_prefix
        )
    own = backbone.state_dict()
    shapes = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in weights.items()
              if k in own and v.shape != own[k].shape]  # fmt: skip
    missing = [k for k in own if k not in weights]
    if shapes or missing:
        raise ValueError(
            f"{path} (prefix {prefix!r}) does not fit the configured ViT: "
            f"missing {missing[:5]}, shape mismatches {shapes[:5]}"
        )
    backbone.load_state_dict({k: v for k, v in weights.items() if k in own})


def load_timm_weights(body: nn.Module, path: str | Path, prefix: str = "") -> None:
    """Loads the ``prefix``-ed weights of a file into a timm ``features_only`` model.

    The file is a dict with a ``state_dict`` (a Lightning checkpoint or the output of
    ``detector_backbone_pretrain.py``) or a bare state dict. Keys equal those of the timm
    classifier of the same architecture without its head (``num_classes=0``), so a classifier's
    weights load directly; ``prefix="detector.backbone.body."`` takes a detector checkpoint's.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the keys when no
    key has the prefix, or weights are missing, unexpected or mis-shaped (another architecture).
    """
    weights = _prefixed_weights(
        path, prefix, "backbone checkpoint",
        "the output of experiments/benchmarks/detector_backbone_pretrain.py, or null",
    )  # fmt: skip
    own = body.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in weights.items()
              if k in own and v.shape != own[k].shape]  # fmt: skip
    if missing or unexpected or shapes:
        raise ValueError(
            f"{path} (prefix {prefix!r}) does not fit the configured timm backbone: "
            f"{len(missing)} missing {missing[:5]}, {len(unexpected)} unexpected "
            f"{unexpected[:5]}, {len(shapes)} shape mismatches {shapes[:5]}"
        )
    body.load_state_dict(weights)


class ViTPyramidBackbone(nn.Module):
    """DINOv2 ViT + simple feature pyramid; maps at strides p/2, p, 2p (and p/4 on request).

    CLS and register tokens are dropped; patch tokens are reshaped to (B, D, H/p, W/p). Inputs
    must be multiples of 2p (the pyramid's max-pool halves the patch grid).

    Args:
        arch: a timm DINOv2 name, or None to build from embed_dim/depth/num_heads/patch_size.
        img_size: the size the positional embedding is built for (resized on the fly).
        checkpoint: path of a DINOv2 Lightning checkpoint, or None (random init).
        checkpoint_prefix: state_dict prefix of the teacher backbone in that checkpoint.
        with_stride4: also return a stride-p/4 map first (two transposed convs), for masks.
    """

    def __init__(
        self,
        arch: str | None = None,
        embed_dim: int | None = 192,
        depth: int | None = 4,
        num_heads: int | None = 3,
        patch_size: int | None = 16,
        img_size: int = 224,
        num_register_tokens: int | None = None,
        ffn: str | None = None,
        mlp_ratio: float = 4.0,
        layerscale_init: float | None = 1e-5,
        drop_path: float = 0.0,
        checkpoint: str | None = None,
        checkpoint_prefix: str = "teacher.backbone.",
        with_stride4: bool = False,
    ) -> None:
        super().__init__()
        explicit = {}
        if arch is None:
            explicit = dict(
                embed_dim=embed_dim, depth=depth, num_heads=num_heads, patch_size=patch_size
            )
        self.vit = DINOv2Backbone(
            arch, img_size=img_size, num_register_tokens=num_register_tokens, ffn=ffn,
            mlp_ratio=mlp_ratio, layerscale_init=layerscale_init, drop_path=drop_path, **explicit,
        )  # fmt: skip
        if checkpoint:
            load_dinov2_weights(self.vit, checkpoint, checkpoint_prefix)
        dim, p = self.vit.embed_dim, self.vit.patch_size
        self.up2 = nn.ConvTranspose2d(dim, dim // 2, 2, stride=2)
        self.down2 = nn.MaxPool2d(2)
        self.out_channels = [dim // 2, dim, dim]
        self.strides = [p / 2, p, 2 * p]
        self.up4 = None
        if with_stride4:
            self.up4 = nn.Sequential(
                nn.ConvTranspose2d(dim, dim // 2, 2, stride=2),
                nn.GroupNorm(1, dim // 2),
                nn.GELU(),
                nn.ConvTranspose2d(dim // 2, dim // 4, 2, stride=2),
            )
            self.out_channels.insert(0, dim // 4)
            self.strides.insert(0, p / 4)
        self.size_divisibility = 2 * p

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images (B, 3, H, W), H and W multiples of 2p → maps [(B, C_i, H/s_i, W/s_i)]."""
        b, _, h, w = images.shape
        p = self.vit.patch_size
        patch = self.vit.forward_features(images)["patch"]  # (B, N, D)
        x = patch.transpose(1, 2).reshape(b, -1, h // p, w // p)
        maps = [self.up2(x), x, self.down2(x)]
        if self.up4 is not None:
            maps.insert(0, self.up4(x))
        return maps


class TimmBackbone(nn.Module):
    """Any timm model with ``features_only=True``; NHWC outputs (Swin) are permuted to NCHW.

    Args:
        name: timm model name, e.g. ``swin_tiny_patch4_window7_224`` or ``resnet50``.
        out_indices: the stages to return (three for the channel mapper; GD Swin-T: 1, 2, 3).
        size_divisibility: multiple the input sides are padded to (32 for most timm models).
        pretrained: timm weights (needs internet or a local cache); off by default.
        checkpoint: a file of weights for this timm architecture (``load_timm_weights``), e.g.
            from ``experiments/benchmarks/detector_backbone_pretrain.py``; None = no file.
        checkpoint_prefix: the key prefix of the backbone's weights in that file.
        frozen_bn: keep every BatchNorm in eval mode (running statistics, as detectors do with
            a pretrained backbone; its affine weights still train).
        timm_kwargs: passed to ``timm.create_model`` (e.g. ``dynamic_img_size: true`` for Swin).
    """

    def __init__(
        self,
        name: str = "resnet18",
        out_indices: Sequence[int] = (1, 2, 3),
        size_divisibility: int = 32,
        pretrained: bool = False,
        checkpoint: str | None = None,
        checkpoint_prefix: str = "",
        frozen_bn: bool = False,
        **timm_kwargs: Any,
    ) -> None:
        super().__init__()
        self.body = timm.create_model(
            name, features_only=True, out_indices=tuple(out_indices), pretrained=pretrained,
            **timm_kwargs,
        )  # fmt: skip
        if checkpoint:
            load_timm_weights(self.body, checkpoint, checkpoint_prefix)
        self.frozen_bn = frozen_bn
        self.out_channels = list(self.body.feature_info.channels())
        self.strides = list(self.body.feature_info.reduction())
        self.size_divisibility = size_divisibility

    def train(self, mode: bool = True) -> "TimmBackbone":
        super().train(mode)
        if self.frozen_bn:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images (B, 3, H, W) → maps [(B, C_i, h_i, w_i)], NCHW."""
        maps = []
        for m, c in zip(self.body(images), self.out_channels, strict=True):
            if m.shape[1] != c and m.shape[-1] == c:
                m = m.permute(0, 3, 1, 2).contiguous()
            maps.append(m)
        return maps
