"""T-Rex2-style visual prompt encoder (arXiv 2403.14610; spec §12.2).

A category is shown by example boxes (or points) on one or more images. Per image and category
("group") the encoder builds K prompt tokens — a learnable content vector C plus the sine
embedding of the box (4 coordinates) or point (2 coordinates) through a Linear — and one
universal class token C′ positioned at the whole image (0.5, 0.5, 1, 1). Each layer runs
multi-scale deformable attention over the encoder memory with every token's box as reference
(points get a small fixed-size box), self-attention restricted to the tokens of one group, and
an FFN. C′'s output is the group's prompt vector; the vectors of one category from several
example images are averaged (``average_by_category``), giving one d-vector per category that
replaces text tokens in the contrastive head.
"""

from dataclasses import dataclass

import torch
from torch import nn

from lightning_modules.components.detection.deformable_attention import (
    MultiScaleDeformableAttention,
)
from lightning_modules.components.detection.layers import FeedForward, MultiHeadAttention
from lightning_modules.components.detection.outputs import ImageFeatures
from lightning_modules.components.detection.position_encoding import (
    box_sine_embedding,
    sine_embedding,
)

_WHOLE_IMAGE = (0.5, 0.5, 1.0, 1.0)


@dataclass
class VisualPrompts:
    """N prompts on the images of a batch.

    boxes: (N, 4) cxcywh normalised to the unpadded image; a point is a box with w = h = 0.
    image_index: (N,) long, the image each prompt is drawn on.
    group: (N,) long in [0, G): prompts of one category on one image share a group (one C′);
    every group id in 0..G−1 must occur and lie on a single image.
    """

    boxes: torch.Tensor
    image_index: torch.Tensor
    group: torch.Tensor

    @property
    def num_groups(self) -> int:
        return int(self.group.max()) + 1 if len(self.group) else 0

    def group_images(self) -> torch.Tensor:
        """(G,) the image of each group; raises if a group spans images or an id is missing."""
        g = self.num_groups
        first = torch.full((g,), -1, dtype=torch.long, device=self.group.device)
        first = first.scatter(0, self.group, self.image_index)
        if (first < 0).any():
            raise ValueError(f"visual prompt groups must be 0..{g - 1} without gaps")
        if not torch.equal(first[self.group], self.image_index):
            raise ValueError("a visual prompt group spans several images")
        return first


def prompt_boxes_from_pixels(coords: torch.Tensor, image_size: tuple[int, int],
                             source: str = "image") -> torch.Tensor:  # fmt: skip
    """Pixel prompts on an image of ``image_size`` (h, w) → normalised cxcywh (K, 4).

    coords: (K, 4) boxes x1, y1, x2, y2 or (K, 2) points x, y. A box or point outside the image,
    or a box with x2 ≤ x1 or y2 ≤ y1, raises ``ValueError`` naming ``source`` and the prompt.
    """
    h, w = image_size
    coords = coords.float().reshape(-1, coords.shape[-1])
    if coords.shape[-1] == 2:
        coords = torch.cat([coords, coords], -1)
    elif coords.shape[-1] != 4:
        raise ValueError(f"{source}: a visual prompt is x1,y1,x2,y2 or x,y, got {coords.shape}")
    limit = coords.new_tensor([w, h, w, h])
    for box in coords:
        if (box < 0).any() or (box > limit).any():
            raise ValueError(f"visual prompt {box.tolist()} lies outside {source} ({w}x{h} px)")
        if (box[2] < box[0]) or (box[3] < box[1]):
            raise ValueError(f"visual prompt box {box.tolist()} on {source} has x2 < x1 or y2 < y1")
    xyxy = coords / limit
    return torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], -1)


def average_by_category(
    vectors: torch.Tensor, category: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """vectors (G, d), category (G,) long → (sorted unique ids (C,), mean vector per id (C, d))."""
    ids, inverse = torch.unique(category, sorted=True, return_inverse=True)
    sums = vectors.new_zeros(len(ids), vectors.shape[-1]).index_add(0, inverse, vectors)
    counts = torch.bincount(inverse, minlength=len(ids)).to(vectors.dtype)
    return ids, sums / counts[:, None]


class VisualPromptLayer(nn.Module):
    """Post-norm: deformable cross-attention to the image → in-group self-attention → FFN."""

    def __init__(self, dim: int, n_heads: int, levels: int, points: int, ffn_dim: int) -> None:
        super().__init__()
        self.image_attn = MultiScaleDeformableAttention(dim, n_heads, levels, points)
        self.self_attn = MultiHeadAttention(dim, n_heads)
        self.ffn = FeedForward(dim, ffn_dim)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))

    def forward(self, tgt: torch.Tensor, pos: torch.Tensor, ref: torch.Tensor,
                memory: torch.Tensor, feats: ImageFeatures,
                blocked: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """tgt, pos (B, n, d); ref (B, n, L, 4); blocked (B, n, n) True = may not attend."""
        out = self.image_attn(tgt + pos, memory, ref, feats.spatial_shapes, feats.pad_mask)
        tgt = self.norms[0](tgt + out)
        q = tgt + pos
        tgt = self.norms[1](tgt + self.self_attn(q, q, tgt, attn_mask=blocked))
        return self.norms[2](tgt + self.ffn(tgt))


class VisualPromptEncoder(nn.Module):
    """Prompt boxes/points + encoder memory → one prompt vector per group.

    Args:
        dim, n_heads, levels, points: as the detector's transformer (d, heads, L, P).
        num_layers: 3 (unofficial T-Rex2 re-implementation; unspecified in the paper).
        ffn_dim: FFN width (default 4·d). point_size: side of the reference box of a point.
    """

    def __init__(self, dim: int, n_heads: int = 8, levels: int = 4, points: int = 4,
                 num_layers: int = 3, ffn_dim: int | None = None,
                 point_size: float = 0.05) -> None:  # fmt: skip
        super().__init__()
        self.dim, self.point_size = dim, point_size
        self.box_pos = nn.Linear(2 * dim, dim)  # 4 coordinates × d/2 sine features
        self.point_pos = nn.Linear(dim, dim)  # 2 coordinates × d/2 sine features
        self.content = nn.Parameter(torch.randn(dim) * 0.02)
        self.universal = nn.Parameter(torch.randn(dim) * 0.02)
        self.layers = nn.ModuleList(
            VisualPromptLayer(dim, n_heads, levels, points, ffn_dim or 4 * dim)
            for _ in range(num_layers)
        )
        self.out_proj = nn.Linear(dim, dim)

    def _tokens(self, prompts: VisualPrompts, batch_size: int) -> dict[str, torch.Tensor]:
        """Per image its prompt tokens then one C′ per group, right-padded to n tokens."""
        group_image = prompts.group_images()
        per_image = []
        for b in range(batch_size):
            idx = (prompts.image_index == b).nonzero().flatten()
            groups = (group_image == b).nonzero().flatten()
            per_image.append((idx, groups))
        n = max(1, max(len(i) + len(g) for i, g in per_image))
        dev = prompts.boxes.device
        box = prompts.boxes.new_tensor(_WHOLE_IMAGE).repeat(batch_size, n, 1)
        is_prompt = torch.zeros(batch_size, n, dtype=torch.bool, device=dev)
        group = torch.full((batch_size, n), -1, dtype=torch.long, device=dev)
        out_slot = torch.zeros(prompts.num_groups, 2, dtype=torch.long, device=dev)
        for b, (idx, groups) in enumerate(per_image):
            k = len(idx)
            box[b, :k] = prompts.boxes[idx]
            is_prompt[b, :k] = True
            group[b, :k] = prompts.group[idx]
            group[b, k : k + len(groups)] = groups
            out_slot[groups, 0] = b
            out_slot[groups, 1] = torch.arange(k, k + len(groups), device=dev)
        return {"box": box, "is_prompt": is_prompt, "group": group, "out_slot": out_slot}

    def forward(
        self, memory: torch.Tensor, feats: ImageFeatures, prompts: VisualPrompts
    ) -> torch.Tensor:
        """memory (B, S, d) encoder output of the prompt images → vectors (G, d) by group id."""
        t = self._tokens(prompts, memory.shape[0])
        box, is_prompt = t["box"].to(memory.dtype), t["is_prompt"]
        is_point = is_prompt & (box[..., 2:] == 0).all(-1)
        pos = torch.where(
            is_point[..., None],
            self.point_pos(sine_embedding(box[..., :2], self.dim // 2).to(memory.dtype)),
            self.box_pos(box_sine_embedding(box, self.dim // 2).to(memory.dtype)),
        )
        tgt = torch.where(is_prompt[..., None], self.content, self.universal).to(memory.dtype)
        size = torch.full_like(box[..., 2:], self.point_size)
        ref = torch.cat([box[..., :2], torch.where(is_point[..., None], size, box[..., 2:])], -1)
        scale = torch.cat([feats.valid_ratios, feats.valid_ratios], -1)[:, None]  # (B, 1, L, 4)
        ref = ref[:, :, None] * scale
        g = t["group"]
        blocked = g[:, :, None] != g[:, None, :]  # other groups (padding: group −1, own block)
        for layer in self.layers:
            tgt = layer(tgt, pos, ref, memory, feats, blocked)
        slot = t["out_slot"]
        return self.out_proj(tgt[slot[:, 0], slot[:, 1]])
