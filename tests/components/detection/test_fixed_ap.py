"""Spec §15 test 11 (Fixed AP part): a hand-made case, equality with standard AP below the caps,
and the per-class top-k over the split."""

import pytest
import torch
from torchmetrics.detection import MeanAveragePrecision

from lightning_modules.components.detection.fixed_ap import FixedAP, top_k_per_class

GT = {"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]), "labels": torch.tensor([1, 1])}
# Ranked by score: hit GT 0, miss (a box on nothing), hit GT 1.
PRED = {
    "boxes": torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]]),
    "scores": torch.tensor([0.9, 0.8, 0.7]),
    "labels": torch.tensor([1, 1, 1]),
}


def test_hand_made_case() -> None:
    """TP, FP, TP on 2 GTs: precision 1 up to recall 0.5, then 2/3. COCO's 101-point
    interpolation gives (51 · 1 + 50 · 2/3) / 101 at every IoU threshold (exact boxes)."""
    metric = FixedAP()
    metric.update([PRED], [GT])
    expected = (51 + 50 * 2 / 3) / 101
    result = metric.compute()
    for key in ("map", "map_50", "map_75"):
        assert result[key].item() == pytest.approx(expected, abs=1e-12)


def test_top_k_is_over_the_split_not_per_image() -> None:
    """With top_k = 2 the class keeps its 2 best detections of the split (TP 0.9, FP 0.8),
    so recall stops at 0.5: AP = 51 / 101."""
    metric = FixedAP(top_k=2)
    metric.update([PRED], [GT])
    assert metric.compute()["map"].item() == pytest.approx(51 / 101, abs=1e-12)


def test_top_k_per_class_keeps_exactly_the_best() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(3, (10_050,), generator=g)
    labels[:10_010] = 7  # class 7 has more than 10k detections
    scores = torch.rand(10_050, generator=g)
    keep = top_k_per_class(labels, scores, 10_000)
    kept7 = keep[labels[keep] == 7]
    assert len(kept7) == 10_000
    others = torch.ones(len(labels), dtype=torch.bool)
    others[kept7] = False
    assert scores[kept7].min() > scores[others & (labels == 7)].max()
    assert (labels[keep] != 7).sum() == (labels != 7).sum()  # small classes keep everything


def test_equals_standard_ap_below_the_caps() -> None:
    """Random images, ≤ 60 detections each (< 100) and < 10k per class: Fixed AP = COCO AP."""
    g = torch.Generator().manual_seed(1)
    preds, targets = [], []
    for _ in range(12):
        n_gt, n_det = (
            int(torch.randint(0, 5, (), generator=g)),
            int(torch.randint(0, 60, (), generator=g)),
        )
        gt_xy = torch.rand(n_gt, 2, generator=g) * 80
        gt = torch.cat([gt_xy, gt_xy + 5 + torch.rand(n_gt, 2, generator=g) * 20], 1)
        gt_labels = torch.randint(1, 4, (n_gt,), generator=g)
        # detections: jittered copies of the GTs plus random boxes
        near = (
            gt[torch.randint(max(n_gt, 1), (n_det,), generator=g) % max(n_gt, 1)] if n_gt else None
        )
        xy = torch.rand(n_det, 2, generator=g) * 80
        rand = torch.cat([xy, xy + 5 + torch.rand(n_det, 2, generator=g) * 20], 1)
        boxes = (
            rand
            if near is None
            else torch.where(
                torch.rand(n_det, 1, generator=g) < 0.5,
                near + torch.randn(n_det, 4, generator=g),
                rand,
            )
        )
        preds.append({"boxes": boxes, "scores": torch.rand(n_det, generator=g),
                      "labels": torch.randint(1, 4, (n_det,), generator=g)})  # fmt: skip
        targets.append({"boxes": gt, "labels": gt_labels})
    fixed, standard = FixedAP(), MeanAveragePrecision(backend="pycocotools")
    fixed.update(preds, targets)
    standard.update(preds, targets)
    ours, theirs = fixed.compute(), standard.compute()
    assert theirs["map"] > 0.05  # the case is not degenerate
    for key in ("map", "map_50", "map_75"):
        assert ours[key].item() == pytest.approx(theirs[key].item(), abs=1e-6)


def test_no_per_image_cap() -> None:
    """150 confident false positives on one image push a late true positive past COCO's 100
    cap (standard AP 0); Fixed AP still finds it (precision 1/151 at recall 1)."""
    fp = torch.tensor([[50.0, 50, 60, 60]]).repeat(150, 1)
    pred = {"boxes": torch.cat([fp, GT["boxes"][:1]]),
            "scores": torch.cat([torch.linspace(0.99, 0.5, 150), torch.tensor([0.1])]),
            "labels": torch.ones(151, dtype=torch.long)}  # fmt: skip
    target = {"boxes": GT["boxes"][:1], "labels": torch.tensor([1])}
    fixed, standard = FixedAP(), MeanAveragePrecision(backend="pycocotools")
    standard.warn_on_many_detections = False  # the point of this case
    fixed.update([pred], [target])
    standard.update([pred], [target])
    assert standard.compute()["map"].item() == pytest.approx(0.0)
    assert fixed.compute()["map"].item() == pytest.approx(1 / 151, rel=1e-6)
