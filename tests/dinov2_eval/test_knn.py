"""Weighted cosine kNN (spec §9): toy accuracy, a brute-force golden test, k clipping, T."""

import math

import pytest
import torch
import torch.nn.functional as F

from datamodules.components.image_tensors import load_image_tensors
from lightning_modules.components.knn import (
    WeightedKNNClassifier,
    knn_class_scores,
    knn_top1,
    pixel_knn_top1,
)


def reference_knn(train, train_labels, test, k, temperature, num_classes):
    """Sorted-loop DINOv1 kNN: exp(cos/T) votes of the k most similar train rows."""
    train, test = F.normalize(train, dim=1), F.normalize(test, dim=1)
    scores = torch.zeros(len(test), num_classes, dtype=torch.float64)
    for i, q in enumerate(test):
        sims = [float(q @ t) for t in train]
        order = sorted(range(len(train)), key=lambda j: -sims[j])[: min(k, len(train))]
        for j in order:
            scores[i, int(train_labels[j])] += math.exp(sims[j] / temperature)
    return scores


def separable(n_per_class: int, num_classes: int = 4, dim: int = 16, seed: int = 0):
    """Class centres fixed (orthonormal, norm 5); ``seed`` draws the noise."""
    centres = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(0)))
    centres = centres[0][:num_classes]
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    feats = 5 * centres[labels] + 0.3 * torch.randn(len(labels), dim, generator=gen)
    return feats, labels


def test_separable_features_are_classified_perfectly() -> None:
    train, train_labels = separable(100, seed=0)
    test, test_labels = separable(50, seed=1)
    accs = knn_top1(train, train_labels, test, test_labels)
    assert set(accs) == {10, 20, 100, 200}
    assert accs[20] == 1.0


@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_matches_brute_force_reference_for_every_k(temperature: float) -> None:
    gen = torch.Generator().manual_seed(0)
    train, test = torch.randn(57, 8, generator=gen), torch.randn(23, 8, generator=gen)
    labels = torch.randint(0, 5, (57,), generator=gen)
    ks = (1, 3, 10, 20, 57, 100)
    ours = knn_class_scores(train, labels, test, ks, temperature, num_classes=5, chunk_size=7)
    for k in ks:
        ref = reference_knn(train.double(), labels, test.double(), k, temperature, 5)
        # ours = exp(sim/T) / (sum over the k_max neighbours): same up to a per-row factor
        torch.testing.assert_close(
            ours[k].double() / ours[k].double().sum(1, keepdim=True),
            ref / ref.sum(1, keepdim=True), rtol=1e-4, atol=1e-6,
        )  # fmt: skip
        assert torch.equal(ours[k].argmax(1), ref.argmax(1))


def test_k_is_clipped_to_the_bank_size() -> None:
    gen = torch.Generator().manual_seed(0)
    train, test = torch.randn(5, 4, generator=gen), torch.randn(9, 4, generator=gen)
    labels, test_labels = torch.tensor([0, 1, 1, 2, 0]), torch.randint(0, 3, (9,), generator=gen)
    scores = knn_class_scores(train, labels, test, ks=(5, 10, 200))
    assert set(scores) == {5, 10, 200}
    torch.testing.assert_close(scores[10], scores[5])
    torch.testing.assert_close(scores[200], scores[5])
    accs = knn_top1(train, labels, test, test_labels, ks=(20,))
    assert 0.0 <= accs[20] <= 1.0


def test_temperature_limits_are_nearest_neighbour_and_majority_vote() -> None:
    gen = torch.Generator().manual_seed(3)
    train, test = torch.randn(40, 6, generator=gen), torch.randn(30, 6, generator=gen)
    labels = torch.randint(0, 3, (40,), generator=gen)
    sims = F.normalize(test, dim=1) @ F.normalize(train, dim=1).T
    nearest = labels[sims.argmax(1)]
    cold = knn_class_scores(train, labels, test, ks=(7,), temperature=1e-3)[7]
    assert torch.equal(cold.argmax(1), nearest)
    votes = F.one_hot(labels[sims.topk(7, dim=1).indices], 3).sum(1)  # (30, 3) counts
    hot = knn_class_scores(train, labels, test, ks=(7,), temperature=1e4)[7]
    unique = (votes == votes.max(1, keepdim=True).values).sum(1) == 1
    assert unique.sum() > 10
    assert torch.equal(hot.argmax(1)[unique], votes.argmax(1)[unique])
    # scores are exp(sim/T)-proportional: halving T squares the per-neighbour weight ratios
    w1 = knn_class_scores(train[:2], torch.tensor([0, 1]), test[:1], ks=(2,), temperature=0.2)[2]
    w2 = knn_class_scores(train[:2], torch.tensor([0, 1]), test[:1], ks=(2,), temperature=0.1)[2]
    torch.testing.assert_close(w2[0, 0] / w2[0, 1], (w1[0, 0] / w1[0, 1]) ** 2)


def test_scale_invariant_and_chunk_invariant() -> None:
    gen = torch.Generator().manual_seed(0)
    train, test = torch.randn(50, 8, generator=gen), torch.randn(20, 8, generator=gen)
    labels = torch.randint(0, 4, (50,), generator=gen)
    a = knn_class_scores(train, labels, test, ks=(10,), chunk_size=3)[10]
    b = knn_class_scores(3 * train, labels, 0.5 * test, ks=(10,), chunk_size=1024)[10]
    torch.testing.assert_close(a, b)


def test_metric_accumulates_batches_like_the_function() -> None:
    train, train_labels = separable(30, seed=0)
    test, test_labels = separable(10, seed=1)
    metric = WeightedKNNClassifier(ks=(5, 20))
    for i in range(0, len(train), 32):
        metric.update(train_features=train[i : i + 32], train_targets=train_labels[i : i + 32])
    metric.update(test_features=test, test_targets=test_labels)
    out = metric.compute()
    expected = knn_top1(train, train_labels, test, test_labels, ks=(5, 20))
    assert {k: float(v) for k, v in out.items()} == pytest.approx(expected)
    metric.reset()
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="needs train and test"):
        metric.compute()


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="empty"):
        knn_class_scores(torch.empty(0, 4), torch.empty(0, dtype=torch.long), torch.randn(2, 4))
    with pytest.raises(ValueError, match="labels"):
        knn_class_scores(torch.randn(3, 4), torch.zeros(2, dtype=torch.long), torch.randn(2, 4))


def test_pixel_baseline_on_digits() -> None:
    train, train_labels = load_image_tensors("digits", "unused", train=True)
    test, test_labels = load_image_tensors("digits", "unused", train=False)
    accs = pixel_knn_top1(train, train_labels, test, test_labels, ks=(20,))
    assert accs[20] > 0.9
