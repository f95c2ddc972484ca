"""Text–visual prompt alignment (T-Rex2, arXiv 2403.14610 §3.4): an InfoNCE loss that pulls the
visual prompt vector of each category towards that category's text embedding in the space the
shared contrastive class head scores queries against, with the caption's other names (hard
negatives included) as the negatives.

Visual prompt vectors replace text tokens in the class head, so a visual prompt works as well as
a text prompt when it lands where the category's text lies. Detection loss alone on visual steps
only contrasts the categories present in a batch (a few, rarely confusers); the caption offers
40 names, ¾ of them same-colour or same-object confusers.

Text embeddings of one category are the mean of its tokens after the feature enhancer
(``category_embeddings``). These name vectors share one dominant direction (nearest-name cosine
0.98 on the synthetic benchmark, RESULTS issue 6). With ``centre`` both sides are taken relative
to the caption's mean name vector m before the cosine: the loss then shapes only the direction
that tells names apart, and leaves the shared component (what every name scores alike) to the
detection loss.
"""

import torch
import torch.nn.functional as F
from torch import nn


def category_embeddings(memory_text: torch.Tensor, positive_map: torch.Tensor) -> torch.Tensor:
    """memory_text (B, T, d), positive_map (B, C, T) 0/1 → (B, C, d): the mean of each category's
    tokens (zero for a category without tokens, e.g. padding)."""
    pmap = positive_map.to(memory_text.dtype)
    return pmap @ memory_text / pmap.sum(-1, keepdim=True).clamp(min=1)


def alignment_anchors(ids: torch.Tensor, label_ids: list[torch.Tensor],
                      cat_index: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:  # fmt: skip
    """Which visual vector is aligned against which caption.

    ids (C_v,) sorted category ids of the visual vectors; per image b its caption's category ids
    label_ids[b] (C_b,) and the caption index of every GT cat_index[b] (G_b,) → per distinct
    (image, GT category): (vector row (N,), image (N,), caption index of the positive (N,)).
    """
    rows, images, targets = [], [], []
    for b, (labels, idx) in enumerate(zip(label_ids, cat_index, strict=True)):
        c = torch.unique(idx)
        rows.append(torch.searchsorted(ids, labels[c]))
        images.append(torch.full_like(c, b))
        targets.append(c)
    return torch.cat(rows), torch.cat(images), torch.cat(targets)


class VisualTextAlignmentLoss(nn.Module):
    """InfoNCE of visual prompt vectors against their captions' category embeddings.

    Args:
        temperature: τ of the softmax over cosine similarities.
        centre: subtract each caption's mean category embedding (over its valid categories)
            from both the visual vector and the text embeddings before the cosine.
    """

    def __init__(self, temperature: float = 0.1, centre: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature, self.centre = float(temperature), bool(centre)

    def forward(self, visual: torch.Tensor, text: torch.Tensor, valid: torch.Tensor,
                target: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """visual (N, d) anchors; text (N, C, d) each anchor's candidate category embeddings;
        valid (N, C) bool, True = a real category; target (N,) long index of the positive in C
        → mean −log softmax_c(cos(v, t_c) / τ)[target]. Computed in fp32; 0 for N = 0."""
        if not len(visual):
            return visual.sum() * 0.0
        visual, text = visual.float(), text.float()
        if not valid.gather(1, target[:, None]).all():
            raise ValueError("an alignment target points at an invalid (padding) category")
        if self.centre:
            w = valid.float()[..., None]
            mean = (text * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp(min=1)
            visual, text = visual - mean[:, 0], text - mean
        sim = F.cosine_similarity(visual[:, None], text, dim=-1, eps=1e-6) / self.temperature
        sim = sim.masked_fill(~valid, float("-inf"))
        return F.cross_entropy(sim, target)
