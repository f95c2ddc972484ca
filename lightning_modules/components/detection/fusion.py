"""Bidirectional image↔text cross-attention (GD ``fuse_modules.py`` ``BiAttentionBlock``, §3.4).

Image tokens and text tokens are projected to a shared fusion width; one score matrix
(B·heads, S, T) is computed. Its softmax over text tokens (text padding masked) updates the
image tokens, and the softmax of its transpose over image tokens (image padding masked) updates
the text tokens. Scores are clamped to ±50,000 and shifted by their row max (fp16 safety).
Residuals are scaled by layer-scale γ (init 1e-4) and pass through drop-path.
"""

import math

import torch
from timm.layers import DropPath
from torch import nn

_CLAMP = 50_000.0


class BiAttention(nn.Module):
    """Shared-score cross-attention in both directions; returns the two updates (no residual).

    Args:
        image_dim, text_dim: widths of the two streams.
        width: fusion width (GD: 1024 with 4 heads of 256).
        num_heads: heads; head dim = width / num_heads.
        dropout: dropout on both attention maps.
    """

    def __init__(
        self, image_dim: int, text_dim: int, width: int, num_heads: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"fusion width {width} is not divisible by {num_heads} heads")
        self.num_heads, self.head_dim = num_heads, width // num_heads
        self.image_query = nn.Linear(image_dim, width)
        self.text_key = nn.Linear(text_dim, width)
        self.image_value = nn.Linear(image_dim, width)
        self.text_value = nn.Linear(text_dim, width)
        self.image_out = nn.Linear(width, image_dim)
        self.text_out = nn.Linear(width, text_dim)
        self.dropout = nn.Dropout(dropout)
        for layer in self.modules():
            if isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, N, Dh)

    def forward(
        self,
        image: torch.Tensor,
        text: torch.Tensor,
        image_pad_mask: torch.Tensor,
        text_token_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image (B, S, dv), text (B, T, dl), image_pad_mask (B, S) True = padding,
        text_token_mask (B, T) True = real → updates (B, S, dv) and (B, T, dl)."""
        q = self._heads(self.image_query(image)) / math.sqrt(self.head_dim)
        k = self._heads(self.text_key(text))
        scores = (q @ k.transpose(-1, -2)).clamp(-_CLAMP, _CLAMP)  # (B, H, S, T)
        low = torch.finfo(scores.dtype).min
        to_text = scores - scores.max(-1, keepdim=True).values
        to_text = to_text.masked_fill(~text_token_mask[:, None, None, :], low)
        to_image = scores.transpose(-1, -2)  # (B, H, T, S)
        to_image = (to_image - to_image.max(-1, keepdim=True).values).clamp(-_CLAMP, _CLAMP)
        to_image = to_image.masked_fill(image_pad_mask[:, None, None, :], low)
        attn_image = self.dropout(to_text.softmax(-1))  # image queries over text tokens
        attn_text = self.dropout(to_image.softmax(-1))  # text queries over image tokens
        image_update = (attn_image @ self._heads(self.text_value(text))).transpose(1, 2)
        text_update = (attn_text @ self._heads(self.image_value(image))).transpose(1, 2)
        return self.image_out(image_update.flatten(2)), self.text_out(text_update.flatten(2))


class BiAttentionBlock(nn.Module):
    """Pre-norm ``BiAttention`` with layer-scale and drop-path residuals on both streams."""

    def __init__(
        self,
        image_dim: int,
        text_dim: int,
        width: int = 1024,
        num_heads: int = 4,
        dropout: float = 0.0,
        drop_path: float = 0.1,
        layer_scale_init: float = 1e-4,
    ) -> None:
        super().__init__()
        self.image_norm = nn.LayerNorm(image_dim)
        self.text_norm = nn.LayerNorm(text_dim)
        self.attn = BiAttention(image_dim, text_dim, width, num_heads, dropout)
        self.image_gamma = nn.Parameter(torch.full((image_dim,), layer_scale_init))
        self.text_gamma = nn.Parameter(torch.full((text_dim,), layer_scale_init))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(
        self,
        image: torch.Tensor,
        text: torch.Tensor,
        image_pad_mask: torch.Tensor,
        text_token_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Shapes as ``BiAttention.forward``; returns the updated (image, text)."""
        dv, dl = self.attn(
            self.image_norm(image), self.text_norm(text), image_pad_mask, text_token_mask
        )
        image = image + self.drop_path(self.image_gamma * dv)
        return image, text + self.drop_path(self.text_gamma * dl)
