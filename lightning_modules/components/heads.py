"""DINO / iBOT projection head (spec §3.1; reference ``dinov2/layers/dino_head.py``)."""

import itertools

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


class DINOHead(nn.Module):
    """MLP → L2-normalise → weight-normed prototypes.

    ``Linear(D, hidden) → GELU → [Linear(hidden, hidden) → GELU] × (nlayers − 2) →
    Linear(hidden, bottleneck)``, no BatchNorm. The prototype layer ``last_layer`` is
    ``weight_norm(Linear(bottleneck, K, bias=False))`` with its magnitude ``g`` filled with 1 and
    left trainable (DINOv1's ``norm_last_layer`` freezing is not used), so logits lie in
    ``[−|g_k|, |g_k|]``. Parameter names contain ``last_layer`` for the freeze schedule (§5.1).

    Args:
        in_dim: backbone width D.
        out_dim: number of prototypes K (65536 default config, 131072 L/g).
        hidden_dim: MLP width (2048).
        bottleneck_dim: normalised embedding width (256, or 384 for the L/g DINO head).
        nlayers: number of MLP Linears (>= 1).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
    ) -> None:
        super().__init__()
        if nlayers < 1:
            raise ValueError(f"nlayers must be >= 1, got {nlayers}")
        dims = [in_dim] + [hidden_dim] * (nlayers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
            layers.append(nn.Linear(d_in, d_out))
            if i < nlayers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        # Prototypes keep PyTorch's default Linear init; weight_norm then sets g = ‖v_k‖,
        # which is overwritten with 1 so every prototype starts at unit magnitude.
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        with torch.no_grad():
            self.last_layer.parametrizations.weight.original0.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features (..., D) → prototype logits (..., K)."""
        x = self.mlp(x)
        # 1e-6 keeps the normalisation finite in fp16, where 1e-12 underflows.
        eps = 1e-6 if x.dtype == torch.float16 else 1e-12
        x = F.normalize(x, dim=-1, p=2, eps=eps)
        return self.last_layer(x)
