"""Feature enhancer (spec §3.4) and cross-modality decoder (spec §3.6-3.7), post-norm layers.

Enhancer layer, GD order: bidirectional image↔text fusion → text self-attention (sub-sentence
mask, sine positions of the restarting ids) → image multi-scale deformable self-attention + FFN.
Decoder layer, GD code order: self-attention (DN mask) → text cross-attention → deformable image
cross-attention with 4-d reference boxes → FFN. Boxes are refined per layer by one shared box
head with DINO's look-forward-twice.
"""

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from lightning_modules.components.detection.deformable_attention import (
    MultiScaleDeformableAttention,
)
from lightning_modules.components.detection.fusion import BiAttentionBlock
from lightning_modules.components.detection.heads import MLP, box_head, inverse_sigmoid
from lightning_modules.components.detection.layers import FeedForward, MultiHeadAttention
from lightning_modules.components.detection.outputs import ImageFeatures, TextMemory
from lightning_modules.components.detection.position_encoding import (
    box_sine_embedding,
    text_position_embedding,
)


def encoder_reference_points(
    spatial_shapes: torch.Tensor, valid_ratios: torch.Tensor
) -> torch.Tensor:
    """Pixel centres of every level, normalised to the valid region, seen from every level.

    spatial_shapes (L, 2) (h, w); valid_ratios (B, L, 2) (w, h) → (B, S, L, 2) as (x, y).
    """
    refs = []
    for lvl, (h, w) in enumerate(spatial_shapes.tolist()):
        ys = torch.arange(h, device=valid_ratios.device, dtype=valid_ratios.dtype) + 0.5
        xs = torch.arange(w, device=valid_ratios.device, dtype=valid_ratios.dtype) + 0.5
        ref_y, ref_x = torch.meshgrid(ys, xs, indexing="ij")
        ref_y = ref_y.reshape(1, -1) / (valid_ratios[:, None, lvl, 1] * h)
        ref_x = ref_x.reshape(1, -1) / (valid_ratios[:, None, lvl, 0] * w)
        refs.append(torch.stack([ref_x, ref_y], -1))
    return torch.cat(refs, 1)[:, :, None] * valid_ratios[:, None]


class TextSelfAttentionLayer(nn.Module):
    """Post-norm text self-attention restricted by the sub-sentence mask, then FFN."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(dim, num_heads, dropout)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn_dim, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, text: torch.Tensor, pos: torch.Tensor, submask: torch.Tensor) -> torch.Tensor:
        """text, pos (B, T, d); submask (B, T, T) bool True = may attend → (B, T, d)."""
        q = text + pos
        text = self.norm1(text + self.dropout(self.attn(q, q, text, attn_mask=~submask)))
        return self.norm2(text + self.dropout(self.ffn(text)))


class DeformableEncoderLayer(nn.Module):
    """Post-norm multi-scale deformable self-attention over image tokens, then FFN."""

    def __init__(
        self, dim: int, num_heads: int, ffn_dim: int, levels: int, points: int, dropout: float
    ) -> None:
        super().__init__()
        self.attn = MultiScaleDeformableAttention(dim, num_heads, levels, points)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn_dim, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, ref: torch.Tensor,
                feats: ImageFeatures) -> torch.Tensor:  # fmt: skip
        """src, pos (B, S, d); ref (B, S, L, 2) → (B, S, d)."""
        out = self.attn(src + pos, src, ref, feats.spatial_shapes, feats.pad_mask)
        src = self.norm1(src + self.dropout(out))
        return self.norm2(src + self.dropout(self.ffn(src)))


class FeatureEnhancer(nn.Module):
    """``num_layers`` × (fusion → text self-attention → image deformable self-attention).

    Args:
        num_layers: 6 in GD-T. dim: d. num_heads: MSDA heads (8).
        ffn_image, ffn_text: FFN widths (2048 / 1024). text_heads: text self-attention heads (4).
        fusion_width, fusion_heads, layer_scale_init, drop_path: ``BiAttentionBlock``.
        levels, points: MSDA levels and points. grad_checkpoint: recompute layers in backward.
    """

    def __init__(
        self, num_layers: int = 6, dim: int = 256, num_heads: int = 8, ffn_image: int = 2048,
        ffn_text: int = 1024, text_heads: int = 4, fusion_width: int = 1024,
        fusion_heads: int = 4, layer_scale_init: float = 1e-4, drop_path: float = 0.1,
        levels: int = 4, points: int = 4, dropout: float = 0.0, grad_checkpoint: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        self.fusion = nn.ModuleList(
            BiAttentionBlock(
                dim, dim, fusion_width, fusion_heads, dropout, drop_path, layer_scale_init
            )
            for _ in range(num_layers)
        )
        self.text_layers = nn.ModuleList(
            TextSelfAttentionLayer(dim, text_heads, ffn_text, dropout) for _ in range(num_layers)
        )
        self.image_layers = nn.ModuleList(
            DeformableEncoderLayer(dim, num_heads, ffn_image, levels, points, dropout)
            for _ in range(num_layers)
        )
        self.dim, self.grad_checkpoint = dim, grad_checkpoint

    def _layer(self, i: int, src: torch.Tensor, text: torch.Tensor, ref: torch.Tensor,
               text_pos: torch.Tensor, feats: ImageFeatures, mem: TextMemory):  # fmt: skip
        src, text = self.fusion[i](src, text, feats.pad_mask, mem.text_token_mask)
        text = self.text_layers[i](text, text_pos, mem.submask)
        return self.image_layers[i](src, feats.pos, ref, feats), text

    def forward(self, feats: ImageFeatures, mem: TextMemory) -> tuple[torch.Tensor, torch.Tensor]:
        """→ memory (B, S, d), memory_text (B, T, d)."""
        ref = encoder_reference_points(feats.spatial_shapes, feats.valid_ratios)
        text_pos = text_position_embedding(mem.position_ids, self.dim).to(mem.memory_text.dtype)
        src, text = feats.src, mem.memory_text
        for i in range(len(self.fusion)):
            if self.grad_checkpoint and self.training:
                src, text = checkpoint(self._layer, i, src, text, ref, text_pos, feats, mem,
                                       use_reentrant=False)  # fmt: skip
            else:
                src, text = self._layer(i, src, text, ref, text_pos, feats, mem)
        return src, text


class DecoderLayer(nn.Module):
    """Self-attention → text cross-attention → deformable image cross-attention → FFN."""

    def __init__(
        self, dim: int, num_heads: int, ffn_dim: int, levels: int, points: int, dropout: float
    ) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(dim, num_heads, dropout)
        self.text_attn = MultiHeadAttention(dim, num_heads, dropout)
        self.image_attn = MultiScaleDeformableAttention(dim, num_heads, levels, points)
        self.ffn = FeedForward(dim, ffn_dim, dropout)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(4))
        self.dropout = nn.Dropout(dropout)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor, ref: torch.Tensor,
                memory: torch.Tensor, feats: ImageFeatures, memory_text: torch.Tensor,
                text_token_mask: torch.Tensor, self_attn_mask: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
        """tgt, query_pos (B, N, d); ref (B, N, L, 4); self_attn_mask (N, N) True = blocked."""
        q = tgt + query_pos
        tgt = self.norms[0](tgt + self.dropout(self.self_attn(q, q, tgt, attn_mask=self_attn_mask)))
        out = self.text_attn(tgt + query_pos, memory_text, memory_text,
                             key_padding_mask=~text_token_mask)  # fmt: skip
        tgt = self.norms[1](tgt + self.dropout(out))
        out = self.image_attn(tgt + query_pos, memory, ref, feats.spatial_shapes, feats.pad_mask)
        tgt = self.norms[2](tgt + self.dropout(out))
        return self.norms[3](tgt + self.dropout(self.ffn(tgt)))


class CrossModalityDecoder(nn.Module):
    """``num_layers`` decoder layers with per-layer box refinement (look-forward-twice).

    ``bbox_head`` is shared by all layers; ``norm`` is the shared final LayerNorm applied to every
    layer's output. ``query_pos = MLP(2d → d → d)(sine(ref_box))`` with d/2 features per coordinate.
    """

    def __init__(
        self, num_layers: int = 6, dim: int = 256, num_heads: int = 8, ffn_dim: int = 2048,
        levels: int = 4, points: int = 4, dropout: float = 0.0,
    ) -> None:  # fmt: skip
        super().__init__()
        self.layers = nn.ModuleList(
            DecoderLayer(dim, num_heads, ffn_dim, levels, points, dropout)
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.ref_point_head = MLP(2 * dim, dim, dim, 2)
        self.bbox_head = box_head(dim)
        self.dim = dim

    def forward(self, tgt: torch.Tensor, ref_unsig: torch.Tensor, memory: torch.Tensor,
                feats: ImageFeatures, memory_text: torch.Tensor, text_token_mask: torch.Tensor,
                self_attn_mask: torch.Tensor | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:  # fmt: skip
        """tgt (B, N, d) content queries; ref_unsig (B, N, 4) inverse-sigmoid anchors (detached).

        Returns per layer (hidden (B, N, d) after the shared norm, boxes (B, N, 4) cxcywh).
        Layer i predicts ``sigmoid(bbox_head(h_i) + logit(ref_{i−1}))`` with the *undetached*
        ref_{i−1}, so its box loss also trains layer i−1's refinement; layer i+1 gets the
        prediction detached.
        """
        ref_detached = ref_unsig.sigmoid().detach()
        ref_previous = ref_detached
        scale = torch.cat([feats.valid_ratios, feats.valid_ratios], -1)[:, None]  # (B, 1, L, 4)
        outputs = []
        for layer in self.layers:
            query_pos = self.ref_point_head(
                box_sine_embedding(ref_detached, self.dim // 2).to(tgt.dtype)
            )
            ref_input = ref_detached[:, :, None] * scale
            tgt = layer(tgt, query_pos, ref_input, memory, feats, memory_text, text_token_mask,
                        self_attn_mask)  # fmt: skip
            hidden = self.norm(tgt)
            delta = self.bbox_head(hidden)
            boxes = (delta + inverse_sigmoid(ref_previous)).sigmoid()
            new_ref = (delta + inverse_sigmoid(ref_detached)).sigmoid()
            outputs.append((hidden, boxes))
            ref_previous, ref_detached = new_ref, new_ref.detach()
        return outputs
