"""Plain attention and feed-forward layers shared by the feature enhancer and the decoder.

Written with explicit matmuls and ``masked_fill`` (no fused kernels, no in-place boolean ops) so
the image path exports to ONNX (decision P10) and runs identically on every device.
"""

import math

import torch
from torch import nn


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention with separate q/k/v projections (``nn.MultiheadAttention``
    semantics, batch first).

    Masks: ``key_padding_mask`` (B, Nk) bool, True = ignore that key; ``attn_mask`` bool,
    True = blocked, shaped (Nq, Nk), (B, Nq, Nk) or (B, H, Nq, Nk). A row with every key blocked
    would give NaN; callers guarantee at least one visible key (the diagonal, or a real token).
    """

    def __init__(
        self, embed_dim: int, num_heads: int, dropout: float = 0.0, kdim: int | None = None
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, embed_dim // num_heads
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(kdim or embed_dim, embed_dim)
        self.v_proj = nn.Linear(kdim or embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.dropout = nn.Dropout(dropout)
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, N, Dh)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """query (B, Nq, E), key/value (B, Nk, kdim) → (B, Nq, E)."""
        q, k = self._heads(self.q_proj(query)), self._heads(self.k_proj(key))
        v = self._heads(self.v_proj(value))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # (B, H, Nq, Nk)
        blocked = None
        if key_padding_mask is not None:
            blocked = key_padding_mask[:, None, None, :]
        if attn_mask is not None:
            m = attn_mask
            m = m[None, None] if m.dim() == 2 else (m[:, None] if m.dim() == 3 else m)
            blocked = m if blocked is None else blocked | m
        if blocked is not None:
            scores = scores.masked_fill(blocked, torch.finfo(scores.dtype).min)
        attn = self.dropout(scores.softmax(-1))
        out = (attn @ v).transpose(1, 2).flatten(2)
        return self.out_proj(out)


class FeedForward(nn.Module):
    """Linear → ReLU → dropout → Linear (the transformer FFN, without residual or norm)."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
