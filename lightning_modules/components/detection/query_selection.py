"""Two-stage proposals and language-guided query selection (spec §3.5; GD ``transformer.py``).

Every encoder token proposes an anchor (its pixel centre, side 0.05·2^level); the tokens whose
best text-token similarity is highest supply the top-K anchors (language-guided selection).
Content queries are the static learnable ``tgt_embed`` (mixed query selection, DINO; GD), or with
``content="encoder"`` the selected tokens' projected encoder features, detached (DINO's
"standard" two-stage variant; an issue-6 screen: the static queries lose colour, RESULTS).
"""

import torch
from torch import nn

from lightning_modules.components.detection.heads import PRIOR_BIAS, ContrastiveHead, box_head
from lightning_modules.components.detection.outputs import ImageFeatures, Predictions


def encoder_proposals(
    memory: torch.Tensor, feats: ImageFeatures
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """memory (B, S, d) → (memory with invalid tokens zeroed (B, S, d), anchors (B, S, 4)
    inverse-sigmoid cxcywh in float32 (also under autocast), valid (B, S) bool).

    A token is invalid on padding or when any anchor coordinate leaves (0.01, 0.99); its anchor
    is 0 (never selected: its score is −inf, see ``QuerySelection``).
    """
    b = memory.shape[0]
    proposals, start = [], 0
    for lvl, (h, w) in enumerate(feats.spatial_shapes.tolist()):
        mask = feats.pad_mask[:, start : start + h * w].view(b, h, w)
        valid_h = (~mask[:, :, 0]).sum(1).float()
        valid_w = (~mask[:, 0, :]).sum(1).float()
        ys = torch.arange(h, device=memory.device, dtype=torch.float32)
        xs = torch.arange(w, device=memory.device, dtype=torch.float32)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        grid = torch.stack([grid_x, grid_y], -1)[None] + 0.5  # (1, h, w, 2)
        grid = grid / torch.stack([valid_w, valid_h], -1).view(b, 1, 1, 2)
        wh = torch.full_like(grid, 0.05 * 2.0**lvl)
        proposals.append(torch.cat([grid, wh], -1).view(b, h * w, 4))
        start += h * w
    anchors = torch.cat(proposals, 1)
    valid = ((anchors > 0.01) & (anchors < 0.99)).all(-1) & ~feats.pad_mask
    safe = anchors.clamp(0.01, 0.99)
    unsig = torch.where(valid[..., None], torch.log(safe / (1 - safe)), torch.zeros_like(safe))
    return memory.masked_fill(~valid[..., None], 0.0), unsig, valid


class QuerySelection(nn.Module):
    """Encoder-side heads, top-K anchor selection and the learnable content queries.

    Args:
        dim: d. num_queries: K (900 in GD-T).
        log_scale_init, bias_init: the encoder class head's own (s, β) (decision P5).
        content: "static" (learnable ``tgt_embed``) or "encoder" (selected features, detached).
    """

    def __init__(
        self,
        dim: int = 256,
        num_queries: int = 900,
        log_scale_init: float = 0.0,
        bias_init: float = PRIOR_BIAS,
        content: str = "static",
    ) -> None:
        super().__init__()
        if content not in ("static", "encoder"):
            raise ValueError(f"query content must be 'static' or 'encoder', got {content!r}")
        self.num_queries, self.content = num_queries, content
        self.enc_output = nn.Linear(dim, dim)
        self.enc_norm = nn.LayerNorm(dim)
        self.class_head = ContrastiveHead(dim, log_scale_init, bias_init)
        self.bbox_head = box_head(dim)  # not shared with the decoder's
        self.tgt_embed = nn.Embedding(num_queries, dim)

    def forward(
        self,
        memory: torch.Tensor,
        feats: ImageFeatures,
        memory_text: torch.Tensor,
        text_token_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, Predictions]:
        """→ content queries (B, K, d), detached anchors (B, K, 4) inverse-sigmoid, and the
        encoder's top-K predictions (logits (B, K, T), undetached boxes (B, K, 4) cxcywh)."""
        out_mem, anchors, valid = encoder_proposals(memory, feats)
        out_mem = self.enc_norm(self.enc_output(out_mem))
        logits = self.class_head(out_mem, memory_text)  # (B, S, T)
        score = logits.masked_fill(~text_token_mask[:, None], float("-inf")).max(-1).values
        score = score.masked_fill(~valid, float("-inf"))
        k = min(self.num_queries, score.shape[1])
        top = score.topk(k, dim=1).indices[..., None]  # (B, K, 1)
        selected = out_mem.gather(1, top.expand(-1, -1, out_mem.shape[-1]))
        boxes_unsig = self.bbox_head(selected) + anchors.gather(1, top.expand(-1, -1, 4))
        enc_logits = logits.gather(1, top.expand(-1, -1, logits.shape[-1]))
        if self.content == "encoder":
            tgt = selected.detach()
        else:
            tgt = self.tgt_embed.weight[:k][None].expand(memory.shape[0], -1, -1)
        return tgt, boxes_unsig.detach(), Predictions(enc_logits, boxes_unsig.sigmoid())
