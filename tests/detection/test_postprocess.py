"""Post-processing on a hand-made case, chunk merging, and COCO AP of GT-as-predictions."""

import math

import pytest
import torch

from lightning_modules.components.detection.postprocess import (
    ChunkPrediction,
    PostProcess,
    category_scores,
    postprocess_image,
)
from lightning_modules.grounding_detector_module import _map_metric


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def _hand_made() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tokens: [CLS] cat . hot dog . [SEP] <pad>; categories: cat (1), hot dog (3, 4)."""
    probs = torch.full((3, 8), 0.05)
    probs[0, 1], probs[0, 3], probs[0, 4] = 0.9, 0.2, 0.4  # cat 0.9, hot dog 0.3
    probs[1, 1], probs[1, 3], probs[1, 4] = 0.1, 0.8, 0.6  # cat 0.1, hot dog 0.7
    probs[2, 7] = 0.99  # only a padded token is high: must not count
    logits = probs.apply_(logit)
    mask = torch.tensor([True] * 7 + [False])
    pmap = torch.zeros(2, 8)
    pmap[0, 1] = 1
    pmap[1, 3:5] = 1
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.25, 0.25, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]])
    return logits, mask, pmap, boxes


def test_category_scores_by_hand() -> None:
    logits, mask, pmap, _ = _hand_made()
    expected = torch.tensor([[0.9, 0.3], [0.1, 0.7], [0.05, 0.05]])
    torch.testing.assert_close(category_scores(logits, mask, pmap), expected)


def test_top_k_boxes_in_pixels() -> None:
    logits, mask, pmap, boxes = _hand_made()
    out = PostProcess(num_select=2)(logits[None], boxes[None], mask[None], [pmap], [(100, 200)])[0]
    torch.testing.assert_close(out["scores"], torch.tensor([0.9, 0.7]))
    assert out["labels"].tolist() == [0, 1]
    # (cx, cy, w, h) = (0.5, 0.5, 0.2, 0.4) on a 200 wide, 100 high image
    torch.testing.assert_close(out["boxes"][0], torch.tensor([80.0, 30.0, 120.0, 70.0]))
    torch.testing.assert_close(out["boxes"][1], torch.tensor([0.0, 0.0, 100.0, 50.0]))


def test_chunks_merge_with_global_labels() -> None:
    logits, mask, pmap, boxes = _hand_made()
    cat = ChunkPrediction(logits, boxes, mask, pmap[:1], torch.tensor([7]))
    dog = ChunkPrediction(logits * 0 + logit(0.5), boxes, mask, pmap[1:], torch.tensor([3]))
    out = postprocess_image([cat, dog], (10, 10), num_select=4)
    assert out["labels"].tolist() == [7, 3, 3, 3]
    torch.testing.assert_close(out["scores"], torch.tensor([0.9, 0.5, 0.5, 0.5]))


def test_nms_option_removes_duplicates() -> None:
    logits, mask, pmap, _ = _hand_made()
    same = torch.tensor([[0.5, 0.5, 0.2, 0.2]]).repeat(3, 1)
    part = ChunkPrediction(logits, same, mask, pmap, torch.tensor([0, 1]))
    out = postprocess_image([part], (10, 10), num_select=10, nms_iou=0.5)
    assert sorted(out["labels"].tolist()) == [0, 1]  # one box per category survives


@pytest.mark.parametrize("n_images", [1, 3])
def test_map_is_one_on_ground_truth(n_images: int) -> None:
    g = torch.Generator().manual_seed(n_images)
    metric = _map_metric()
    for _ in range(n_images):
        xy = torch.rand(4, 2, generator=g) * 100
        boxes = torch.cat([xy, xy + 10 + torch.rand(4, 2, generator=g) * 50], 1)
        labels = torch.tensor([1, 2, 2, 5])
        metric.update([{"boxes": boxes, "scores": torch.ones(4), "labels": labels}],
                      [{"boxes": boxes, "labels": labels}])  # fmt: skip
    result = metric.compute()
    assert result["map"].item() == pytest.approx(1.0)
    assert result["map_50"].item() == pytest.approx(1.0)
