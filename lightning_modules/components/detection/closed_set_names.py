"""Closed-set control for the grounding detector (issue 6 diagnosis).

Every token of a caption category gets one learned vector per category name instead of the text
encoder's feature; special tokens ([CLS], [SEP], ".") keep the encoder's. Everything after it
(``feat_map``, enhancer, decoder, contrastive head, token-level loss) is unchanged, so comparing
it with the text-prompted detector isolates what the frozen text features cost.
"""

from collections.abc import Sequence

import torch
from torch import nn


class ClosedSetNames(nn.Module):
    """Learned name vectors in place of text features.

    Args:
        names: the category names it knows (row i ↔ ``names[i]``); any other name shares one
            extra "unknown" row, so held-out names are not told apart (no zero-shot).
        dim: the text encoder's width (the vectors enter ``feat_map`` like its features).
        init_std: standard deviation of the initial vectors.
    """

    def __init__(self, names: Sequence[str], dim: int, init_std: float = 1.0) -> None:
        super().__init__()
        self.index = {str(n): i for i, n in enumerate(names)}
        if len(self.index) != len(names):
            raise ValueError("ClosedSetNames: names must be distinct")
        self.embed = nn.Embedding(len(names) + 1, dim)
        nn.init.normal_(self.embed.weight, std=init_std)

    def forward(self, feats: torch.Tensor, positive_map: torch.Tensor,
                names: Sequence[Sequence[str]]) -> torch.Tensor:  # fmt: skip
        """feats (B, T, D) text-encoder features, positive_map (B, C, T) 0/1 (rows beyond a
        caption's categories are 0), names[b] the C_b names of caption b → (B, T, D)."""
        b, c = positive_map.shape[:2]
        unknown = len(self.index)
        rows = torch.full((b, c), unknown, dtype=torch.long, device=feats.device)
        for i, caption_names in enumerate(names):
            ids = [self.index.get(n, unknown) for n in caption_names]
            rows[i, : len(ids)] = torch.tensor(ids, dtype=torch.long, device=feats.device)
        pmap = positive_map.to(feats.dtype)
        named = torch.einsum("bct,bcd->btd", pmap, self.embed(rows).to(feats.dtype))
        covered = pmap.sum(1, keepdim=True).transpose(1, 2) > 0  # (B, T, 1)
        return torch.where(covered, named, feats)
