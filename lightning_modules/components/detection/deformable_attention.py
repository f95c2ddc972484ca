"""Multi-scale deformable attention in pure PyTorch (Deformable DETR, arXiv 2010.04159; spec §4).

Decision P2: ``F.grid_sample`` is the only implementation, so there is no compiled op to build
and no "_C not defined" failure. ``align_corners=False`` with grid ``2·loc − 1`` reproduces the
CUDA kernel's pixel convention ``x = loc·W − 0.5``, and ``padding_mode="zeros"`` treats
neighbours outside a map as 0, like the kernel.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


def _level_sizes(spatial_shapes: torch.Tensor) -> list[tuple[int, int]]:
    return [(int(h), int(w)) for h, w in spatial_shapes.tolist()]


def ms_deform_attn_core(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Bilinear sampling at per-head locations, weighted and summed over levels and points.

    value: (B, S, H, Dh), the L levels flattened row-major, S = Σ h_l·w_l.
    spatial_shapes: (L, 2) long, (h_l, w_l) per level.
    sampling_locations: (B, Nq, H, L, P, 2), (x, y) normalised to [0, 1] (outside allowed).
    attention_weights: (B, Nq, H, L, P).
    Returns (B, Nq, H·Dh).
    """
    b, _, n_heads, head_dim = value.shape
    _, n_q, _, n_levels, n_points, _ = sampling_locations.shape
    sizes = _level_sizes(spatial_shapes)
    if sum(h * w for h, w in sizes) != value.shape[1]:
        raise ValueError(f"value has {value.shape[1]} tokens but spatial_shapes {sizes} need Σh·w")
    values = value.split([h * w for h, w in sizes], dim=1)
    grids = 2 * sampling_locations - 1  # [0, 1] → grid_sample's [−1, 1]
    samples = []
    for level, (h, w) in enumerate(sizes):
        # (B, h·w, H, Dh) → (B·H, Dh, h, w)
        v = values[level].permute(0, 2, 3, 1).reshape(b * n_heads, head_dim, h, w)
        # (B, Nq, H, P, 2) → (B·H, Nq, P, 2)
        g = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        samples.append(
            F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)
        )  # (B·H, Dh, Nq, P)
    # (B, Nq, H, L, P) → (B·H, 1, Nq, L·P)
    weights = attention_weights.transpose(1, 2).reshape(b * n_heads, 1, n_q, n_levels * n_points)
    out = (torch.cat(samples, dim=-1) * weights).sum(-1)  # (B·H, Dh, Nq)
    return out.view(b, n_heads * head_dim, n_q).transpose(1, 2)


class MultiScaleDeformableAttention(nn.Module):
    """Each query attends to ``num_points`` learned locations per head and level.

    Reference points are 2-d (x, y) — offsets are in pixels of each level — or 4-d boxes
    (cx, cy, w, h) — offsets are fractions of the half box size, divided by ``num_points``.
    """

    def __init__(
        self, embed_dim: int = 256, num_heads: int = 8, num_levels: int = 4, num_points: int = 4
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.num_levels, self.num_points = num_levels, num_points
        n_samples = num_heads * num_levels * num_points
        self.sampling_offsets = nn.Linear(embed_dim, n_samples * 2)
        self.attention_weights = nn.Linear(embed_dim, n_samples)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Offsets start on a ring: head h points along θ_h = 2πh/H, point p at (p+1) steps."""
        nn.init.zeros_(self.sampling_offsets.weight)
        theta = torch.arange(self.num_heads, dtype=torch.float32) * (2 * math.pi / self.num_heads)
        direction = torch.stack([theta.cos(), theta.sin()], dim=-1)  # (H, 2)
        direction = direction / direction.abs().max(dim=-1, keepdim=True).values
        steps = torch.arange(1, self.num_points + 1, dtype=torch.float32)  # (P,)
        grid = direction[:, None, None, :] * steps[None, None, :, None]  # (H, 1, P, 2)
        grid = grid.expand(-1, self.num_levels, -1, -1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def sampling(
        self, query: torch.Tensor, reference_points: torch.Tensor, spatial_shapes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampling locations (B, Nq, H, L, P, 2) and softmaxed weights (B, Nq, H, L, P).

        query: (B, Nq, E); reference_points: (B, Nq, L, 2) as (x, y) or (B, Nq, L, 4) as
        (cx, cy, w, h), normalised; spatial_shapes: (L, 2) as (h, w).
        """
        b, n_q, _ = query.shape
        shape = (b, n_q, self.num_heads, self.num_levels, self.num_points)
        offsets = self.sampling_offsets(query).view(*shape, 2)
        weights = self.attention_weights(query).view(*shape[:3], -1).softmax(-1).view(shape)
        ref = reference_points[:, :, None, :, None, :]  # (B, Nq, 1, L, 1, 2|4)
        if reference_points.shape[-1] == 2:
            # offsets are in pixels of each level: divide by its (w, h)
            wh = spatial_shapes.flip(-1).to(query.dtype)[None, None, None, :, None, :]
            locations = ref + offsets / wh
        elif reference_points.shape[-1] == 4:
            locations = ref[..., :2] + offsets / self.num_points * ref[..., 2:] * 0.5
        else:
            raise ValueError(
                f"reference_points must end in 2 or 4 coordinates, got {reference_points.shape}"
            )
        return locations, weights

    def forward(
        self,
        query: torch.Tensor,
        value: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: torch.Tensor,
        value_pad_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """query (B, Nq, E), value (B, S, E), reference_points (B, Nq, L, 2|4),
        spatial_shapes (L, 2) (h, w), value_pad_mask (B, S) bool True = padding → (B, Nq, E).
        """
        b, s, _ = value.shape
        v = self.value_proj(value)
        if value_pad_mask is not None:
            v = v.masked_fill(value_pad_mask[..., None], 0.0)
        v = v.view(b, s, self.num_heads, self.embed_dim // self.num_heads)
        locations, weights = self.sampling(query, reference_points, spatial_shapes)
        return self.output_proj(ms_deform_attn_core(v, spatial_shapes, locations, weights))
