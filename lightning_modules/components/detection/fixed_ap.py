"""Fixed AP: box AP without a per-image detection cap (Dave et al., arXiv 2102.01066; spec §11).

Standard COCO AP scores at most 100 detections per image, which penalises large-vocabulary
detectors that spread their budget over many categories. Fixed AP instead keeps, **per category,
the ``top_k`` (10,000) highest-scoring detections over the whole split** (no per-image cap) and
then runs ``pycocotools`` ``COCOeval`` with a per-image limit large enough never to bind. With
fewer than ``top_k`` detections per category and at most 100 per image it equals standard AP.
"""

import contextlib
import io

import numpy as np
import torch
import torch.distributed as dist
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchmetrics import Metric

_NO_CAP = 10**9  # per-image detection limit handed to COCOeval: never binds
_RANK_STRIDE = 10**9  # image ids of rank r start at r · stride


def top_k_per_class(labels: torch.Tensor, scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` highest ``scores`` within each label. labels, scores (N,) → (M,)."""
    keep = []
    for label in labels.unique():
        idx = (labels == label).nonzero().flatten()
        keep.append(idx[scores[idx].topk(min(k, len(idx))).indices])
    return torch.cat(keep).sort().values if keep else labels.new_zeros(0)


class FixedAP(Metric):
    """Accumulates an evaluation split; ``compute()`` → {"map", "map_50", "map_75"} (0-d float64
    tensors; −1 when the split has no ground truth or no detection, as pycocotools reports it).

    Args:
        top_k: detections kept per category over the split (10,000 in LVIS Fixed AP).
    """

    full_state_update = False

    def __init__(self, top_k: int = 10_000) -> None:
        super().__init__()
        self.top_k = top_k
        for name in ("pred_boxes", "pred_scores", "pred_labels", "pred_image"):
            self.add_state(name, default=[], dist_reduce_fx="cat")
        for name in ("gt_boxes", "gt_labels", "gt_image"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, preds: list[dict[str, torch.Tensor]],
               targets: list[dict[str, torch.Tensor]]) -> None:  # fmt: skip
        """preds[b]: boxes (N, 4) xyxy pixels, scores (N,), labels (N,); targets[b]: boxes
        (G, 4) xyxy pixels, labels (G,) (the ``MeanAveragePrecision`` input format)."""
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        for p, t in zip(preds, targets, strict=True):
            image = rank * _RANK_STRIDE + len(self.gt_image)  # unique over ranks after a sync
            self.pred_boxes.append(p["boxes"].float().reshape(-1, 4))
            self.pred_scores.append(p["scores"].float().reshape(-1))
            self.pred_labels.append(p["labels"].long().reshape(-1))
            self.pred_image.append(torch.full_like(self.pred_labels[-1], image))
            self.gt_boxes.append(t["boxes"].float().reshape(-1, 4))
            self.gt_labels.append(t["labels"].long().reshape(-1))
            self.gt_image.append(torch.full_like(self.gt_labels[-1], image))

    def compute(self) -> dict[str, torch.Tensor]:
        def cat(xs: list[torch.Tensor] | torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
            if isinstance(xs, torch.Tensor):  # already concatenated by a distributed sync
                return xs.cpu()
            return torch.cat(xs).cpu() if xs else torch.zeros(shape)

        boxes, scores = cat(self.pred_boxes, (0, 4)), cat(self.pred_scores, (0,))
        labels, images = cat(self.pred_labels, (0,)).long(), cat(self.pred_image, (0,)).long()
        keep = top_k_per_class(labels, scores, self.top_k)
        gt = _coco_gt(cat(self.gt_boxes, (0, 4)), cat(self.gt_labels, (0,)).long(),
                      cat(self.gt_image, (0,)).long(), images)  # fmt: skip
        stats = _evaluate(gt, boxes[keep], scores[keep], labels[keep], images[keep])
        return {
            k: torch.tensor(v, dtype=torch.float64)
            for k, v in zip(("map", "map_50", "map_75"), stats, strict=True)
        }


def _xywh(boxes: torch.Tensor) -> np.ndarray:
    out = boxes.double().numpy().copy()
    out[:, 2:] -= out[:, :2]
    return out


def _coco_gt(boxes: torch.Tensor, labels: torch.Tensor, images: torch.Tensor,
             pred_images: torch.Tensor) -> COCO:  # fmt: skip
    """A pycocotools ground truth over every image id that has a GT box or a detection."""
    xywh = _xywh(boxes)
    anns = [
        {"id": i + 1, "image_id": int(images[i]), "category_id": int(labels[i]),
         "bbox": xywh[i].tolist(), "area": float(xywh[i, 2] * xywh[i, 3]), "iscrowd": 0}
        for i in range(len(labels))
    ]  # fmt: skip
    gt = COCO()
    gt.dataset = {
        "images": [{"id": int(i)} for i in torch.cat([images, pred_images]).unique()],
        "annotations": anns,
        "categories": [{"id": int(c)} for c in labels.unique()],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def _evaluate(gt: COCO, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
              images: torch.Tensor) -> tuple[float, float, float]:  # fmt: skip
    """COCOeval bbox AP, AP50, AP75 with no per-image cap; −1 without GT or detections."""
    if not gt.dataset["annotations"] or not len(scores):
        return -1.0, -1.0, -1.0
    xywh = _xywh(boxes)
    rows = np.column_stack([images.numpy(), xywh, scores.double().numpy(), labels.numpy()])
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        dt = gt.loadRes(rows)
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.params.maxDets = [_NO_CAP]
        ev.evaluate()
        ev.accumulate()
    # precision (IoU thresholds, recall points, categories, area ranges, max dets); −1 = no GT.
    # Read it directly: summarize() prints AP at a hard-coded 100 detections in some versions.
    precision = ev.eval["precision"][:, :, :, 0, 0]  # area "all", the only max-dets setting
    iou = ev.params.iouThrs

    def mean(p: np.ndarray) -> float:
        valid = p[p > -1]
        return float(valid.mean()) if valid.size else -1.0

    return (
        mean(precision),
        mean(precision[np.isclose(iou, 0.5)]),
        mean(precision[np.isclose(iou, 0.75)]),
    )
