"""Keypoint head: per-detection keypoint queries refined by deformable layers (spec §12.4).

A simplified ED-Pose / X-Pose design (project choice; DINO-X gives no details): every matching
query becomes K keypoint queries ``h + type_embed[k]`` whose initial location is the box centre
plus a learnable per-type offset × box size. Each layer runs self-attention among the K
keypoints of one instance, multi-scale deformable attention with a 2-d reference at the current
location, and an FFN, then predicts a location update in inverse-sigmoid space and a visibility
logit. Boxes enter detached, so keypoint losses do not move the box head.
"""

import torch
from torch import nn

from lightning_modules.components.detection.deformable_attention import (
    MultiScaleDeformableAttention,
)
from lightning_modules.components.detection.heads import MLP, inverse_sigmoid
from lightning_modules.components.detection.layers import FeedForward, MultiHeadAttention
from lightning_modules.components.detection.outputs import ImageFeatures
from lightning_modules.components.detection.position_encoding import sine_embedding


class KeypointLayer(nn.Module):
    """Post-norm: self-attention within an instance → deformable image attention → FFN."""

    def __init__(self, dim: int, n_heads: int, levels: int, points: int, ffn_dim: int) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(dim, n_heads)
        self.image_attn = MultiScaleDeformableAttention(dim, n_heads, levels, points)
        self.ffn = FeedForward(dim, ffn_dim)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))

    def forward(self, tgt: torch.Tensor, pos: torch.Tensor, loc: torch.Tensor,
                memory: torch.Tensor, feats: ImageFeatures) -> torch.Tensor:  # fmt: skip
        """tgt, pos (B, Q, K, d); loc (B, Q, K, 2) normalised (x, y) → (B, Q, K, d)."""
        b, q, k, d = tgt.shape
        x, p = tgt.reshape(b * q, k, d), pos.reshape(b * q, k, d)
        x = self.norms[0](x + self.self_attn(x + p, x + p, x))
        x, p = x.view(b, q * k, d), p.view(b, q * k, d)
        ref = loc.reshape(b, q * k, 1, 2) * feats.valid_ratios[:, None]  # (B, QK, L, 2)
        x = self.norms[1](x + self.image_attn(x + p, memory, ref, feats.spatial_shapes,
                                              feats.pad_mask))  # fmt: skip
        x = self.norms[2](x + self.ffn(x))
        return x.view(b, q, k, d)


class KeypointHead(nn.Module):
    """Args: dim, n_heads, levels, points: the detector's transformer sizes;
    num_keypoints: K; num_layers: refinement layers (2); ffn_dim: FFN width (default 4·d)."""

    def __init__(self, dim: int, n_heads: int = 8, levels: int = 4, points: int = 4,
                 num_keypoints: int = 5, num_layers: int = 2,
                 ffn_dim: int | None = None) -> None:  # fmt: skip
        super().__init__()
        self.dim, self.num_keypoints = dim, num_keypoints
        self.type_embed = nn.Embedding(num_keypoints, dim)
        self.init_offset = nn.Parameter(torch.zeros(num_keypoints, 2))  # × box (w, h)
        self.pos_head = MLP(dim, dim, dim, 2)
        self.layers = nn.ModuleList(
            KeypointLayer(dim, n_heads, levels, points, ffn_dim or 4 * dim)
            for _ in range(num_layers)
        )
        self.delta_heads = nn.ModuleList(MLP(dim, dim, 2, 3) for _ in range(num_layers))
        self.visibility_heads = nn.ModuleList(nn.Linear(dim, 1) for _ in range(num_layers))
        for head in self.delta_heads:  # refinement starts at identity
            nn.init.zeros_(head.layers[-1].weight)
            nn.init.zeros_(head.layers[-1].bias)

    def forward(self, hidden: torch.Tensor, boxes: torch.Tensor, memory: torch.Tensor,
                feats: ImageFeatures) -> list[torch.Tensor]:  # fmt: skip
        """hidden (B, Q, d), boxes (B, Q, 4) cxcywh, memory (B, S, d) → per layer keypoints
        (B, Q, K, 3): (x, y) normalised to the unpadded image and a visibility logit."""
        boxes = boxes.detach()
        loc = boxes[:, :, None, :2] + self.init_offset * boxes[:, :, None, 2:]
        loc = loc.clamp(0.0, 1.0)
        tgt = hidden[:, :, None] + self.type_embed.weight
        outputs = []
        for layer, delta, vis in zip(self.layers, self.delta_heads, self.visibility_heads,
                                     strict=True):  # fmt: skip
            pos = self.pos_head(sine_embedding(loc, self.dim // 2).to(tgt.dtype))
            tgt = layer(tgt, pos, loc, memory, feats)
            new_loc = (delta(tgt) + inverse_sigmoid(loc)).sigmoid()
            outputs.append(torch.cat([new_loc, vis(tgt)], -1))
            loc = new_loc.detach()
        return outputs
