"""Weighted k-nearest-neighbour classification of frozen features (spec §9, decision D9).

As in the reference implementation (``dinov2/eval/knn.py``) and DINOv1: features are
L2-normalised, neighbours are the ``k_max`` train features of highest cosine similarity, each
neighbour votes for its class with weight ``softmax(sim / T)`` over the ``k_max`` neighbours
(T = 0.07), and the score of a class for a given k is the sum of the weights of the first k
neighbours. The softmax normaliser is shared by all classes, so the argmax equals DINOv1's
``exp(sim / T)`` weighting. k is clipped to the bank size. solo-learn's kNN defaults to a
Euclidean distance; this one is cosine only.
"""

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric

KNN_KS: tuple[int, ...] = (10, 20, 100, 200)
KNN_TEMPERATURE = 0.07


@torch.no_grad()
def extract_cls_features(backbone: nn.Module, batches: Iterable[Tensor]) -> Tensor:
    """Image batches (B, 3, H, W) → float32 CLS features (N, D) on the backbone's device.

    ``backbone(x)`` must return the (final-norm) CLS token, as ``DINOv2Backbone.forward`` does;
    it runs in whatever train/eval mode the caller set.
    """
    device = next(backbone.parameters()).device
    return torch.cat([backbone(x.to(device)).float() for x in batches])


def knn_class_scores(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    ks: Sequence[int] = KNN_KS,
    temperature: float = KNN_TEMPERATURE,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> dict[int, Tensor]:
    """Per-k class scores of every test feature.

    Args:
        train_features: (N, D) bank; test_features: (M, D). Both are L2-normalised here.
        train_labels: (N,) int64 in [0, num_classes).
        ks: neighbour counts; each is clipped to N.
        temperature: T of the ``softmax(sim / T)`` neighbour weights.
        num_classes: C; by default ``max(train_labels) + 1``.
        chunk_size: test rows per similarity matmul, bounding memory to (chunk_size, N).

    Returns: ``{k: scores (M, C)}`` for each requested k (keys as requested, before clipping).
    """
    if train_features.ndim != 2 or test_features.ndim != 2:
        raise ValueError("train_features and test_features must be (N, D) and (M, D)")
    if len(train_features) == 0:
        raise ValueError("the kNN train bank is empty")
    if len(train_features) != len(train_labels):
        raise ValueError(f"{len(train_features)} train features but {len(train_labels)} labels")
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive neighbour counts, got {list(ks)}")
    n_bank = len(train_features)
    num_classes = num_classes or int(train_labels.max()) + 1
    k_max = min(max(ks), n_bank)
    bank = F.normalize(train_features.float(), dim=1)
    queries = F.normalize(test_features.float().to(bank.device), dim=1)
    labels = train_labels.to(bank.device)
    scores: dict[int, list[Tensor]] = {k: [] for k in ks}
    for start in range(0, len(queries), chunk_size):
        sims, idx = (queries[start : start + chunk_size] @ bank.T).topk(k_max, dim=1)
        weights = (sims / temperature).softmax(dim=1)  # (m, k_max), sorted by similarity
        neighbour_labels = labels[idx]
        for k in ks:
            k_eff = min(k, n_bank)
            class_scores = weights.new_zeros(len(weights), num_classes)
            class_scores.scatter_add_(1, neighbour_labels[:, :k_eff], weights[:, :k_eff])
            scores[k].append(class_scores)
    return {k: torch.cat(v) for k, v in scores.items()}


def knn_top1(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    ks: Sequence[int] = KNN_KS,
    temperature: float = KNN_TEMPERATURE,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> dict[int, float]:
    """Top-1 (micro) accuracy per k; arguments as in ``knn_class_scores``, test_labels (M,)."""
    if num_classes is None:
        num_classes = int(torch.cat([train_labels, test_labels.to(train_labels)]).max()) + 1
    scores = knn_class_scores(
        train_features, train_labels, test_features, ks, temperature, num_classes, chunk_size
    )
    targets = test_labels.to(next(iter(scores.values())).device)
    return {k: float((s.argmax(dim=1) == targets).float().mean()) for k, s in scores.items()}


def pixel_knn_top1(
    train_images: Tensor,
    train_labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    ks: Sequence[int] = KNN_KS,
    temperature: float = KNN_TEMPERATURE,
) -> dict[int, float]:
    """The plain-pixel baseline: the same kNN on flattened, mean-centred images (N, C, H, W).

    Centring by the train mean makes the cosine compare deviations from the average image
    rather than raw brightness (all pixel vectors of uint8 images lie in one orthant).
    """
    train = train_images.flatten(1).float()
    mean = train.mean(dim=0, keepdim=True)
    test = test_images.flatten(1).float()
    return knn_top1(train - mean, train_labels, test - mean, test_labels, ks, temperature)


class WeightedKNNClassifier(Metric):
    """kNN top-1 accuracy as a ``torchmetrics.Metric`` (solo-learn style).

    ``update(train_features=..., train_targets=...)`` fills the bank and
    ``update(test_features=..., test_targets=...)`` the queries (either or both per call);
    ``compute()`` returns ``{k: top-1 accuracy}`` as 0-d tensors. States are concatenated across
    processes (``dist_reduce_fx="cat"``), so under DDP every rank's features take part.

    Args:
        ks: neighbour counts (10, 20, 100, 200); clipped to the bank size.
        temperature: T of the neighbour weights (0.07).
        chunk_size: test rows per similarity matmul.
        num_classes: C; by default inferred from the labels.
    """

    full_state_update = False

    def __init__(
        self,
        ks: Sequence[int] = KNN_KS,
        temperature: float = KNN_TEMPERATURE,
        chunk_size: int = 1024,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        self.ks = tuple(int(k) for k in ks)
        self.temperature = temperature
        self.chunk_size = chunk_size
        self.num_classes = num_classes
        for name in ("train_features", "train_targets", "test_features", "test_targets"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self,
        train_features: Tensor | None = None,
        train_targets: Tensor | None = None,
        test_features: Tensor | None = None,
        test_targets: Tensor | None = None,
    ) -> None:
        """Append (B, D) features with their (B,) labels to the bank and/or the queries."""
        for feats, targets, split in (
            (train_features, train_targets, "train"),
            (test_features, test_targets, "test"),
        ):
            if (feats is None) != (targets is None):
                raise ValueError(f"pass {split}_features and {split}_targets together")
            if feats is not None:
                getattr(self, f"{split}_features").append(feats.detach().float())
                getattr(self, f"{split}_targets").append(targets.detach().long())

    def compute(self) -> dict[int, Tensor]:
        if not self.train_features or not self.test_features:
            raise ValueError("WeightedKNNClassifier.compute needs train and test features")
        cat = [
            torch.cat(s) if isinstance(s, list) else s
            for s in (
                self.train_features,
                self.train_targets,
                self.test_features,
                self.test_targets,
            )
        ]
        accs = knn_top1(*cat, self.ks, self.temperature, self.num_classes, self.chunk_size)
        return {k: torch.tensor(v) for k, v in accs.items()}
