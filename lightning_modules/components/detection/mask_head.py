"""Mask-DINO-style mask head (arXiv 2206.02777; spec §12.3).

Pixel embedding (B, d, H/4, W/4) = 1×1 lateral conv (+ GroupNorm) of the stride-4 backbone map
plus the bilinearly upsampled highest-resolution encoder level (stride 8, cut from ``memory``
with ``level_start_index``), then a 1×1 conv. Each query's mask logits are the dot product of
its mask embedding ``MLP(d, d, d)(h)`` (h: the decoder's normed query state) with every pixel
embedding, at every decoder layer.
"""

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.components.detection.heads import MLP
from lightning_modules.components.detection.outputs import ImageFeatures


class MaskHead(nn.Module):
    """Args: in_channels: channels of the stride-4 backbone map; dim: d;
    mlp_layers: layers of the query mask-embedding MLP (3); groups: GroupNorm groups."""

    def __init__(self, in_channels: int, dim: int, mlp_layers: int = 3, groups: int = 32) -> None:
        super().__init__()
        self.lateral = nn.Sequential(nn.Conv2d(in_channels, dim, 1), nn.GroupNorm(groups, dim))
        self.output = nn.Conv2d(dim, dim, 1)
        self.mask_embed = MLP(dim, dim, dim, mlp_layers)
        for conv in (self.lateral[0], self.output):
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)

    def pixel_embedding(self, feats: ImageFeatures, memory: torch.Tensor) -> torch.Tensor:
        """feats.stride4 (B, C, H/4, W/4) and memory (B, S, d) → pixel embedding (B, d, H/4, W/4)."""
        if feats.stride4 is None:
            raise ValueError("the mask head needs ImageFeatures.stride4 (backbone with_stride4)")
        b, d = memory.shape[0], memory.shape[-1]
        h, w = (int(x) for x in feats.spatial_shapes[0].tolist())
        start = int(feats.level_start_index[0])
        level0 = memory[:, start : start + h * w].transpose(1, 2).reshape(b, d, h, w)
        lateral = self.lateral(feats.stride4)
        up = F.interpolate(level0, size=lateral.shape[-2:], mode="bilinear", align_corners=False)
        return self.output(lateral + up)

    def forward(self, hidden: torch.Tensor, pixel: torch.Tensor) -> torch.Tensor:
        """hidden (B, Q, d), pixel (B, d, h, w) → mask logits (B, Q, h, w)."""
        return torch.einsum("bqc,bchw->bqhw", self.mask_embed(hidden), pixel)
