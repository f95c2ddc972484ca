"""KoLeo spreading regulariser (spec §4.5; Sablayrolles et al. 2019; reference koleo_loss.py)."""

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.components.losses.fp32 import fp32_region


class KoLeoLoss(nn.Module):
    """``−(1/n) Σ_i log(‖z_i − z_{nn(i)}‖ + eps)`` on L2-normalised features, per process.

    The nearest neighbour is taken within this process's batch only (no gather, spec D3), and
    features are cast to fp32 because the log of small distances overflows in fp16 (issue #407).
    Duplicate rows stay finite: the distance is computed as ``‖z_i − z_j + eps‖`` (as
    ``nn.PairwiseDistance``), which also keeps its gradient finite at zero.
    """

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Pre-head CLS features (n, D), n >= 2 → scalar loss."""
        if features.dim() != 2:
            raise ValueError(f"KoLeo expects (n, D) features, got {tuple(features.shape)}")
        n = features.shape[0]
        if n < 2:
            raise ValueError(
                f"KoLeo needs at least 2 samples per process to find a nearest neighbour, got {n}; "
                "increase the per-process batch size or disable KoLeo"
            )
        with fp32_region(features):
            z = F.normalize(features.float(), dim=-1, p=2, eps=self.eps)
            with torch.no_grad():
                sims = z @ z.T
                # −inf (not −1) on the diagonal so a point is never its own neighbour, even
                # when every other point is antipodal.
                sims.fill_diagonal_(float("-inf"))
                neighbour = sims.argmax(dim=1)
            dist = F.pairwise_distance(z, z[neighbour], p=2, eps=self.eps)
            return -torch.log(dist + self.eps).mean()
