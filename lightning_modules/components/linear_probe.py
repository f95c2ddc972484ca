"""Linear probing of frozen ViT features over a grid of inputs and learning rates (spec §9).

Follows the reference implementation (``dinov2/eval/linear.py``; paper App. B.3): features come
from ``get_intermediate_layers(n=4)`` once per image and are shared by every classifier of the
grid ``n_last_blocks ∈ {1, 4} × avgpool ∈ {no, yes} × lr``. A classifier's input is the
concatenated CLS of its last n blocks (n·D), plus, with avgpool, the mean patch token of the
last block (+D). Each is a ``Linear`` with weight N(0, 0.01) and zero bias, trained by SGD
(momentum 0.9, no weight decay) with ``lr_eff = lr·batch/256`` on a cosine schedule to 0; the
classifiers are trained jointly (their losses summed; their parameters are disjoint). The
reported classifier is the best on the validation set, selected on that same set (reference
practice: optimistic by construction); its test accuracy is reported beside it.

Features are cached as a compact ``(N, n_max + 1, D)`` tensor (the CLS of the last ``n_max``
blocks, then the last block's mean patch token), so training needs no backbone passes.
"""

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: the reference code's grid; the paper's is {1e-4 … 0.1, 0.2, 0.3, 0.5} (spec §12)
LINEAR_PROBE_LRS: tuple[float, ...] = (
    1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1,
)  # fmt: skip
N_LAST_BLOCKS: tuple[int, ...] = (1, 4)
AVGPOOL: tuple[bool, ...] = (False, True)


@dataclass(frozen=True)
class ProbeConfig:
    """One classifier of the grid."""

    n_last_blocks: int
    avgpool: bool
    lr: float

    @property
    def name(self) -> str:
        return f"blocks{self.n_last_blocks}_avgpool{int(self.avgpool)}_lr{self.lr:g}"


def probe_grid(
    n_last_blocks: Sequence[int] = N_LAST_BLOCKS,
    avgpool: Sequence[bool] = AVGPOOL,
    lrs: Sequence[float] = LINEAR_PROBE_LRS,
) -> list[ProbeConfig]:
    """The full grid, in (n_last_blocks, avgpool, lr) order."""
    return [
        ProbeConfig(int(n), bool(a), float(lr))
        for n in n_last_blocks
        for a in avgpool
        for lr in lrs
    ]


def pooled_block_features(intermediate: Sequence[tuple[Tensor, Tensor]]) -> Tensor:
    """``get_intermediate_layers`` output, per block ``(patch (B, N, D), cls (B, D))`` in block
    order → compact features (B, n + 1, D): the n CLS tokens, then the last block's mean patch."""
    cls = [c for _, c in intermediate]
    return torch.stack([*cls, intermediate[-1][0].mean(dim=1)], dim=1)


@torch.no_grad()
def extract_pooled_features(
    backbone: nn.Module, batches: Iterable[Tensor], n_max: int = 4
) -> Tensor:
    """Image batches (B, 3, H, W) → float32 compact features (N, n_max + 1, D) on the CPU.

    ``backbone`` must offer ``get_intermediate_layers(x, n)`` (``DINOv2Backbone``); it runs on
    its own device, in whatever train/eval mode the caller set.
    """
    device = next(backbone.parameters()).device
    chunks = [
        pooled_block_features(backbone.get_intermediate_layers(x.to(device), n=n_max)).float().cpu()
        for x in batches
    ]
    return torch.cat(chunks)


def linear_input(pooled: Tensor, n_last_blocks: int, avgpool: bool) -> Tensor:
    """Compact features (B, n_max + 1, D) → classifier input (B, n·D [+ D]), as the reference's
    ``create_linear_input``: CLS of the last n blocks in block order, then the mean patch."""
    n_max = pooled.shape[1] - 1
    if not 1 <= n_last_blocks <= n_max:
        raise ValueError(f"n_last_blocks must be in [1, {n_max}], got {n_last_blocks}")
    parts = [pooled[:, n_max - n_last_blocks : n_max].flatten(1)]
    if avgpool:
        parts.append(pooled[:, n_max])
    return torch.cat(parts, dim=1)


class LinearClassifierBank(nn.Module):
    """One linear classifier per grid config, all reading the same compact features.

    Classifiers sharing an input (same ``n_last_blocks`` and ``avgpool``, different lr) are
    stored stacked, ``weights[g]`` (L_g, C, in_g) and ``biases[g]`` (L_g, C), and evaluated in
    one batched matmul; each slice is an independent ``Linear``.

    Args:
        embed_dim: D of the backbone.
        num_classes: C.
        configs: the grid (``probe_grid()``).
        generator: draws the N(0, 0.01) weight init (the global RNG is not touched).

    ``forward(pooled (B, n_max + 1, D))`` → ``{config name: logits (B, C)}``.
    """

    def __init__(
        self,
        embed_dim: int,
        num_classes: int,
        configs: Sequence[ProbeConfig],
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        names = [c.name for c in configs]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate probe configs in {names}")
        self.configs = {c.name: c for c in configs}
        grouped: dict[tuple[int, bool], list[ProbeConfig]] = {}
        for c in configs:
            grouped.setdefault((c.n_last_blocks, c.avgpool), []).append(c)
        self.groups = list(grouped.items())  # [((n, avgpool), [configs])], first-seen order
        self.weights, self.biases = nn.ParameterList(), nn.ParameterList()
        for (n, avgpool), members in self.groups:
            shape = (len(members), num_classes, embed_dim * (n + int(avgpool)))
            self.weights.append(nn.Parameter(torch.randn(shape, generator=generator) * 0.01))
            self.biases.append(nn.Parameter(torch.zeros(len(members), num_classes)))

    def linear(self, name: str) -> tuple[Tensor, Tensor]:
        """Views of one classifier's ``weight (C, in)`` and ``bias (C,)``."""
        for g, (_, members) in enumerate(self.groups):
            for i, c in enumerate(members):
                if c.name == name:
                    return self.weights[g][i], self.biases[g][i]
        raise KeyError(name)

    def group_logits(self, pooled: Tensor) -> list[Tensor]:
        """Per input group, logits (L_g, B, C)."""
        return [
            torch.einsum("bi,lci->lbc", linear_input(pooled, n, avgpool), w) + b.unsqueeze(1)
            for ((n, avgpool), _), w, b in zip(self.groups, self.weights, self.biases, strict=True)
        ]

    def forward(self, pooled: Tensor) -> dict[str, Tensor]:
        out = {}
        for (_, members), logits in zip(self.groups, self.group_logits(pooled), strict=True):
            out.update({c.name: logits[i] for i, c in enumerate(members)})
        return out


def train_classifier_bank(
    bank: LinearClassifierBank,
    features: Tensor,
    labels: Tensor,
    steps: int,
    batch_size: int,
    generator: torch.Generator,
) -> None:
    """SGD (momentum 0.9, dampening 0, wd 0) of every classifier on the mean cross-entropy,
    ``lr_eff = lr·batch/256``, cosine to 0 over ``steps``; ``torch.optim.SGD``'s update written
    out so that each stacked classifier gets its own lr.

    Batches are drawn without replacement from per-epoch permutations of ``generator`` (CPU).
    """
    batch_size = min(batch_size, len(features))
    device = bank.weights[0].device
    base_lrs = [
        torch.tensor([c.lr * batch_size / 256 for c in members], device=device)
        for _, members in bank.groups
    ]
    params = [*bank.weights, *bank.biases]
    buffers = [torch.zeros_like(p) for p in params]
    order = torch.empty(0, dtype=torch.long)
    for step in range(steps):
        if len(order) < batch_size:
            order = torch.randperm(len(features), generator=generator)
        idx, order = order[:batch_size], order[batch_size:]
        x, y = features[idx].to(device), labels[idx].to(device)
        with torch.enable_grad():
            loss = sum(
                F.cross_entropy(logits.flatten(0, 1), y.repeat(len(logits)), reduction="sum")
                for logits in bank.group_logits(x)
            ) / len(y)  # = Σ_classifiers mean-CE: each classifier's own gradient
            grads = torch.autograd.grad(loss, params)
        factor = 0.5 * (1.0 + math.cos(math.pi * step / steps))
        with torch.no_grad():
            # params = [*weights, *biases]: group g's lrs apply to weights[g] and biases[g]
            for p, grad, buf, lr in zip(params, grads, buffers, base_lrs * 2, strict=True):
                buf.mul_(0.9).add_(grad)
                p.sub_((lr * factor).view(-1, *[1] * (p.dim() - 1)) * buf)


@torch.no_grad()
def bank_top1(
    bank: LinearClassifierBank, features: Tensor, labels: Tensor, batch_size: int = 1024
) -> dict[str, float]:
    """Top-1 (micro) accuracy of every classifier of the bank; a diverged classifier
    (non-finite logits) counts as wrong."""
    device = bank.weights[0].device
    correct = dict.fromkeys(bank.configs, 0)
    for start in range(0, len(features), batch_size):
        y = labels[start : start + batch_size].to(device)
        for name, logits in bank(features[start : start + batch_size].to(device)).items():
            hits = (logits.argmax(dim=1) == y) & logits.isfinite().all(dim=1)
            correct[name] += int(hits.sum())
    return {name: n / len(features) for name, n in correct.items()}


@dataclass
class LinearProbeResult:
    """The classifier best on validation, its accuracies, and every classifier's val top-1."""

    best: ProbeConfig
    val_top1: float
    test_top1: float | None
    all_val_top1: dict[str, float]


def run_linear_probe(
    train: tuple[Tensor, Tensor],
    val: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor] | None = None,
    num_classes: int | None = None,
    configs: Sequence[ProbeConfig] | None = None,
    steps: int = 1000,
    batch_size: int = 256,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> LinearProbeResult:
    """Train the grid on compact ``train`` features and pick the best on ``val``.

    Each split is ``(features (N, n_max + 1, D), labels (N,))``. Ties go to the earlier config
    of the grid. Deterministic given ``seed``; the global RNG is not used.
    """
    features, labels = train
    num_classes = num_classes or int(torch.cat([labels, val[1]]).max()) + 1
    configs = configs or probe_grid()
    generator = torch.Generator().manual_seed(seed)
    bank = LinearClassifierBank(features.shape[-1], num_classes, configs, generator)
    bank.to(device or features.device)
    train_classifier_bank(bank, features, labels, steps, batch_size, generator)
    val_accs = bank_top1(bank, *val)
    best_name = max(val_accs, key=val_accs.__getitem__)  # first maximum: grid order
    test_acc = None
    if test is not None:
        test_acc = bank_top1(bank, *test)[best_name]
    return LinearProbeResult(bank.configs[best_name], val_accs[best_name], test_acc, val_accs)
