"""Sine position embeddings (DETR / Grounding DINO): feature maps, boxes and text positions.

One function, ``sine_embedding``, embeds each coordinate with ``num_feats`` interleaved sin/cos
features; the map, box (spec §3.6) and text-position embeddings only choose its inputs.
"""

import math

import torch


def sine_embedding(
    coords: torch.Tensor,
    num_feats: int = 128,
    temperature: float = 10000.0,
    scale: float = 2 * math.pi,
) -> torch.Tensor:
    """coords (..., K) → (..., K·num_feats): per coordinate, in input order,
    ``[sin(c·scale/τ^(0/F)), cos(c·scale/τ^(0/F)), sin(c·scale/τ^(2/F)), ...]``.
    """
    if num_feats % 2:
        raise ValueError(f"num_feats must be even, got {num_feats}")
    dim = torch.arange(num_feats, dtype=torch.float32, device=coords.device)
    dim_t = temperature ** (2 * torch.div(dim, 2, rounding_mode="floor") / num_feats)
    pos = coords.float()[..., None] * scale / dim_t  # (..., K, F)
    pos = torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1)  # (..., K, F/2, 2)
    return pos.flatten(-3)


def sine_position_embedding_2d(
    pad_mask: torch.Tensor, num_feats: int = 128, temperature: float = 20.0, normalize: bool = True
) -> torch.Tensor:
    """pad_mask (B, H, W) bool, True = padding → (B, 2·num_feats, H, W) as [y features, x features].

    Coordinates are 1-based cumulative counts of valid pixels; with ``normalize`` they are divided
    by the valid extent of their row/column, so the embedding spans the *unpadded* image (GD uses
    temperature 20 on both axes).
    """
    valid = ~pad_mask
    y = valid.cumsum(1, dtype=torch.float32)
    x = valid.cumsum(2, dtype=torch.float32)
    if normalize:
        y = y / (y[:, -1:, :] + 1e-6)
        x = x / (x[:, :, -1:] + 1e-6)
        scale = 2 * math.pi
    else:
        scale = 1.0
    emb = sine_embedding(torch.stack([y, x], dim=-1), num_feats, temperature, scale)
    return emb.permute(0, 3, 1, 2).contiguous()


def box_sine_embedding(
    boxes: torch.Tensor, num_feats: int = 128, temperature: float = 10000.0
) -> torch.Tensor:
    """boxes (..., 4) cxcywh normalised → (..., 4·num_feats) in the order (y, x, w, h) (GD)."""
    return sine_embedding(boxes[..., [1, 0, 2, 3]], num_feats, temperature)


def text_position_embedding(
    position_ids: torch.Tensor, dim: int = 256, temperature: float = 10000.0
) -> torch.Tensor:
    """position_ids (B, T) (restarting per phrase) → (B, T, dim) for text self-attention."""
    return sine_embedding(position_ids[..., None], dim, temperature)
