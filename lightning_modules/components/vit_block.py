"""The ViT block with the reference's efficient stochastic depth (spec §2.2).

timm's ``DropPath`` computes every residual branch and multiplies the dropped samples by 0.
The DINOv2 reference instead runs each branch on an exact random subset of ⌊(1−d)·B⌋ samples
and adds it back rescaled by B/subset: the same expectation, and the dropped samples cost no
FLOPs (about d of the student's block compute). timm has no such block, hence this subclass;
it keeps timm's parameter names, so checkpoints and timm weights load unchanged.
"""

from collections.abc import Callable

import torch
from timm.models.vision_transformer import Block


def subset_size(batch: int, rate: float) -> int:
    """Samples kept by batch-subset stochastic depth: ⌊(1−rate)·B⌋, at least 1 (as the reference)."""
    return max(int(batch * (1.0 - rate)), 1)


def _draw_subset(x: torch.Tensor, rate: float) -> tuple[torch.Tensor, float]:
    """One draw for a batch x (B, ...): the kept sample indices (subset,) and their scale B/subset."""
    b = x.shape[0]
    keep = subset_size(b, rate)
    return torch.randperm(b, device=x.device)[:keep], b / keep


def subset_residual(
    x: torch.Tensor, branch: Callable[[torch.Tensor], torch.Tensor], rate: float
) -> torch.Tensor:
    """``x + branch(x)`` (B, T, D) with the branch run on a random subset of the samples only.

    The kept samples' residuals are scaled by B/subset, so the expectation over the draw equals
    ``x + branch(x)``; the dropped samples pass through unchanged and cost nothing.
    """
    index, scale = _draw_subset(x, rate)
    return torch.index_add(x, 0, index, branch(x[index]).to(x.dtype), alpha=scale)


def subset_keep_factor(x: torch.Tensor, rate: float) -> torch.Tensor:
    """(B, 1) residual factors of one batch-subset draw: B/subset for kept samples, else 0.

    Draws the same random numbers as :func:`subset_residual`, so a block evaluated row by row
    (``forward_selected``'s last block) drops the same samples as the whole block.
    """
    index, scale = _draw_subset(x, rate)
    return x.new_zeros(x.shape[0], 1).index_fill_(0, index, scale)


class DINOv2Block(Block):
    """timm ``Block`` whose stochastic depth can drop a batch subset instead of masking.

    ``subset_drop_rate`` > 0 (set by ``DINOv2Backbone.set_drop_path`` in ``batch_subset`` mode,
    with ``drop_path1/2`` left as identities) applies in training only; otherwise the block is
    timm's. Living in ``forward``, the subset path is compiled with the block by
    ``torch.compile``.
    """

    subset_drop_rate: float = 0.0

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        """Tokens (B, T, D) → (B, T, D)."""
        rate = self.subset_drop_rate
        if not (self.training and rate > 0):
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        if attn_mask is not None or is_causal:
            raise NotImplementedError("batch-subset drop-path takes no attention mask")
        x = subset_residual(x, lambda t: self.ls1(self.attn(self.norm1(t))), rate)
        return subset_residual(x, lambda t: self.ls2(self.mlp(self.norm2(t))), rate)
