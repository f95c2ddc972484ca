"""Universal object prompt for prompt-free detection (DINO-X, spec §12.1).

A learnable ``(num_tokens, d)`` embedding stands in for ``feat_map(text_feats)`` as one
one-phrase caption: every token is real, positions run 0..n−1 and every token sees every other
(no sub-sentence blocks). Every ground-truth box is positive for it (its positive-map row is all
ones), so the detector answers "any object". It is trained by prompt-tuning: the detector is
frozen and only this parameter learns. Token count, initialisation and positive definition are
project choices (unspecified in DINO-X).
"""

import torch
from torch import nn

from lightning_modules.components.detection.outputs import TextMemory

#: The special prompt text that routes to the universal prompt (as in the DINO-X API).
PROMPT_FREE = "<prompt_free>"


class UniversalPrompt(nn.Module):
    """Learnable prompt tokens (num_tokens, d), initialised N(0, ``init_std``²)."""

    def __init__(self, dim: int, num_tokens: int = 1, init_std: float = 0.02) -> None:
        super().__init__()
        if num_tokens < 1:
            raise ValueError(f"num_tokens must be ≥ 1, got {num_tokens}")
        self.embedding = nn.Parameter(torch.randn(num_tokens, dim) * init_std)

    @property
    def num_tokens(self) -> int:
        return self.embedding.shape[0]

    def positive_map(self, batch_size: int) -> torch.Tensor:
        """(B, 1, num_tokens) ones: the single "object" category owns every prompt token."""
        return self.embedding.new_ones(batch_size, 1, self.num_tokens)

    def forward(self, batch_size: int) -> TextMemory:
        """→ ``TextMemory`` with memory_text (B, n, d), all-True token mask and submask."""
        n, device = self.num_tokens, self.embedding.device
        return TextMemory(
            memory_text=self.embedding[None].expand(batch_size, -1, -1),
            text_token_mask=torch.ones(batch_size, n, dtype=torch.bool, device=device),
            position_ids=torch.arange(n, device=device)[None].expand(batch_size, -1),
            submask=torch.ones(batch_size, n, n, dtype=torch.bool, device=device),
        )
