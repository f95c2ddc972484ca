"""Class-agnostic keypoint AP by object keypoint similarity (COCO's OKS AP, spec §12.4).

A torchmetrics ``Metric`` that collects detections and ground truths per image and scores them
with ``pycocotools`` ``COCOeval(iouType="keypoints")`` using this dataset's per-keypoint σ
(``kpt_oks_sigmas``) instead of COCO's 17 person values. Every object is one keypoint category
("any object"); the OKS scale s² is the ground-truth box area in pixels.
"""

import contextlib
import io
from collections.abc import Sequence

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchmetrics import Metric


class KeypointAP(Metric):
    """Args: sigmas: per-keypoint σ_k; max_dets: detections scored per image (COCO: 20)."""

    full_state_update = False

    def __init__(self, sigmas: Sequence[float], max_dets: int = 20) -> None:
        super().__init__()
        self.sigmas, self.max_dets = [float(s) for s in sigmas], max_dets
        for name in ("pred_keypoints", "pred_scores", "gt_keypoints", "gt_areas", "image_ids"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, preds: list[dict[str, torch.Tensor]],
               targets: list[dict[str, torch.Tensor]]) -> None:  # fmt: skip
        """preds[b]: keypoints (N, K, 2 or 3) pixels, scores (N,); targets[b]: keypoints
        (G, K, 3) pixels with visibility v (v > 0 = labelled), boxes (G, 4) xyxy pixels."""
        for p, t in zip(preds, targets, strict=True):
            image = torch.tensor([len(self.image_ids)], device=self.device)
            self.image_ids.append(image)
            self.pred_keypoints.append(p["keypoints"][..., :2].float())
            self.pred_scores.append(p["scores"].float())
            self.gt_keypoints.append(t["keypoints"].float())
            wh = t["boxes"][:, 2:] - t["boxes"][:, :2]
            self.gt_areas.append(wh.prod(-1).float())

    def compute(self) -> dict[str, torch.Tensor]:
        """→ {"map": AP over OKS 0.50:0.95, "map_50": AP at OKS 0.5} (0 without detections)."""
        images, gts, dets = [], [], []
        for i, (pk, ps, gk, ga) in enumerate(zip(self.pred_keypoints, self.pred_scores,
                                                 self.gt_keypoints, self.gt_areas, strict=True)):  # fmt: skip
            images.append({"id": i})
            for kp, area in zip(gk.tolist(), ga.tolist(), strict=True):
                xs, ys = [k[0] for k in kp], [k[1] for k in kp]
                gts.append({"id": len(gts) + 1, "image_id": i, "category_id": 1, "iscrowd": 0,
                            "area": area, "keypoints": [v for k in kp for v in k],
                            "num_keypoints": sum(k[2] > 0 for k in kp),
                            "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]})  # fmt: skip
            order = ps.argsort(descending=True)[: self.max_dets]
            for kp, score in zip(pk[order].tolist(), ps[order].tolist(), strict=True):
                dets.append({"image_id": i, "category_id": 1, "score": score,
                             "keypoints": [v for x, y in kp for v in (x, y, 1.0)]})  # fmt: skip
        zero = torch.tensor(0.0)
        if not dets or not gts:
            return {"map": zero, "map_50": zero}
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO()
            coco.dataset = {"images": images, "annotations": gts,
                            "categories": [{"id": 1, "name": "object"}]}  # fmt: skip
            coco.createIndex()
            evaluator = COCOeval(coco, coco.loadRes(dets), iouType="keypoints")
            evaluator.params.kpt_oks_sigmas = np.array(self.sigmas)
            evaluator.params.maxDets = [self.max_dets]
            evaluator.evaluate()
            evaluator.accumulate()
        precision = evaluator.eval["precision"][:, :, 0, 0, -1]  # (IoU thresholds, recall)
        ap = [p[p > -1].mean() if (p > -1).any() else -1.0 for p in precision]
        valid = [a for a in ap if a > -1]
        return {"map": torch.tensor(float(np.mean(valid)) if valid else 0.0),
                "map_50": torch.tensor(float(max(ap[0], 0.0)))}  # fmt: skip
