"""Prediction heads: the contrastive class head (decision P5) and the box MLP (spec §3.7-3.8)."""

import itertools
import math

import torch
from torch import nn

#: −log(99): the initial bias of the class head, i.e. prior probability 0.01 per (query, token).
PRIOR_BIAS = -math.log(99.0)


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """logit(x), with x clamped to [0, 1] and both log arguments to ≥ eps (DINO's version)."""
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


class MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU between them (DETR's box/ref-point MLP)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = x.relu()
        return x


def box_head(dim: int) -> MLP:
    """MLP(d, d, 4, 3 layers) whose last layer starts at zero, so refinement starts at identity."""
    head = MLP(dim, dim, 4, 3)
    nn.init.zeros_(head.layers[-1].weight)
    nn.init.zeros_(head.layers[-1].bias)
    return head


def centre_text(memory_text: torch.Tensor, text_token_mask: torch.Tensor) -> torch.Tensor:
    """Removes each caption's mean real-token vector, keeping the mean token norm:
    memory_text (B, T, d), text_token_mask (B, T) bool True = real token → (B, T, d) =
    c_b · (t − mean_b) with c_b so that the mean norm of the real tokens is unchanged; padded
    tokens become 0 (they stay masked later).

    Name vectors share one dominant direction (nearest-name cosine 0.97-0.98 on the synthetic
    benchmark, RESULTS issue 6). In ⟨h, t⟩ it scores every name alike and its gradient cancels
    between positive and negative tokens; without it only the directions that tell names apart
    remain, at the logit range of the raw tokens.
    """
    real = text_token_mask[..., None].to(memory_text.dtype)
    count = real.sum(1).clamp(min=1)  # (B, 1)
    mean = (memory_text * real).sum(1, keepdim=True) / count[..., None]
    centred = (memory_text - mean) * real
    norm_before = (memory_text.norm(dim=-1, keepdim=True) * real).sum(1) / count
    norm_after = (centred.norm(dim=-1, keepdim=True) * real).sum(1) / count
    return centred * (norm_before / norm_after.clamp(min=1e-6))[..., None]


class ContrastiveHead(nn.Module):
    """``logits[b,q,t] = exp(s)/√d · ⟨h[b,q], text[b,t]⟩ + β`` (decision P5; mmdet ContrastiveEmbed).

    s (log-scale) and β (bias) are learnable scalars; β starts at −log 99 so every sigmoid starts
    near 0.01 and the focal loss starts small. The output is finite everywhere: padded tokens are
    *not* masked here (a −inf multiplied by the learnable scale gives NaN gradients); the loss
    selects valid tokens and post-processing masks them as its last step.
    """

    def __init__(self, dim: int, log_scale_init: float = 0.0, bias_init: float = PRIOR_BIAS):
        super().__init__()
        self.dim = dim
        self.log_scale = nn.Parameter(torch.tensor(float(log_scale_init)))
        self.bias = nn.Parameter(torch.tensor(float(bias_init)))

    def forward(self, hidden: torch.Tensor, memory_text: torch.Tensor) -> torch.Tensor:
        """hidden (B, N, d), memory_text (B, T, d) → logits (B, N, T)."""
        scale = self.log_scale.exp() / math.sqrt(self.dim)
        return scale * (hidden @ memory_text.transpose(-1, -2)) + self.bias
