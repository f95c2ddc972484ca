"""Keypoint head, OKS and OKS AP (spec §12.4): OKS by hand and against pycocotools, AP on
constructed cases, losses at a perfect prediction, head shapes."""

import math

import numpy as np
import pytest
import torch
from pycocotools.cocoeval import COCOeval

from lightning_modules.components.detection.keypoint_ap import KeypointAP
from lightning_modules.components.losses.keypoint_losses import (
    keypoint_losses,
    object_keypoint_similarity,
)


def test_oks_hand_computed() -> None:
    """GT (0, 0), (10, 0), (5, 5) [last unlabelled]; prediction off by (1, 0) and (0, 2);
    area 100; σ = (0.5, 0.25, 1): κ² = 1 and 0.25 → e = 1/200 and 4/50 → OKS = mean of exps."""
    gt = torch.tensor([[[0.0, 0.0], [10.0, 0.0], [5.0, 5.0]]])
    pred = torch.tensor([[[1.0, 0.0], [10.0, 2.0], [50.0, 50.0]]])
    visible = torch.tensor([[True, True, False]])
    oks = object_keypoint_similarity(pred, gt, visible, torch.tensor([100.0]),
                                     torch.tensor([0.5, 0.25, 1.0]))  # fmt: skip
    expected = (math.exp(-1 / 200) + math.exp(-4 / 50)) / 2  # = 0.959064
    assert oks.item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.959064, abs=1e-6)


def test_oks_matches_pycocotools() -> None:
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(1, 5, 2, generator=g) * 50
    pred = gt + torch.randn(1, 5, 2, generator=g) * 3
    visible = torch.tensor([[True, True, False, True, True]])
    sigmas = torch.tensor([0.05, 0.1, 0.05, 0.08, 0.03])
    ours = object_keypoint_similarity(pred, gt, visible, torch.tensor([900.0]), sigmas)
    evaluator = COCOeval(iouType="keypoints")
    evaluator.params.kpt_oks_sigmas = sigmas.numpy().astype(np.float64)
    flat = lambda xy, v: [c for p, vis in zip(xy.tolist(), v, strict=True) for c in (*p, vis)]  # noqa: E731
    evaluator._gts = {(0, 1): [{"keypoints": flat(gt[0], [2, 2, 0, 2, 2]), "area": 900.0,
                                "bbox": [0, 0, 50, 50]}]}  # fmt: skip
    evaluator._dts = {(0, 1): [{"keypoints": flat(pred[0], [1] * 5), "score": 1.0}]}
    evaluator.params.maxDets = [20]
    ref = evaluator.computeOks(0, 1)
    assert ours.item() == pytest.approx(float(ref[0, 0]), rel=1e-5)


def _instance(kp: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"keypoints": kp[None], "boxes": torch.tensor([[0.0, 0.0, 20.0, 20.0]])}


def test_keypoint_ap_on_constructed_cases() -> None:
    sigmas = [0.1, 0.1]
    gt = torch.tensor([[5.0, 5.0, 2.0], [15.0, 15.0, 2.0]])
    perfect = KeypointAP(sigmas)
    perfect.update([{"keypoints": gt[None, :, :2], "scores": torch.ones(1)}], [_instance(gt)])
    assert perfect.compute()["map"].item() == pytest.approx(1.0)
    # shift both points by d with OKS = exp(−d²/(2·400·0.04)) = 0.72: matched at 0.50..0.70
    d = math.sqrt(-math.log(0.72) * 2 * 400 * 0.04)
    shifted = gt[:, :2] + torch.tensor([d, 0.0])
    oks = object_keypoint_similarity(shifted[None], gt[None, :, :2], torch.ones(1, 2, dtype=torch.bool),
                                     torch.tensor([400.0]), torch.tensor(sigmas))  # fmt: skip
    assert oks.item() == pytest.approx(0.72, abs=1e-4)
    metric = KeypointAP(sigmas)
    metric.update([{"keypoints": shifted[None], "scores": torch.ones(1)}], [_instance(gt)])
    result = metric.compute()
    assert result["map"].item() == pytest.approx(0.5) and result["map_50"].item() == pytest.approx(
        1.0
    )


def test_keypoint_losses_vanish_at_the_ground_truth() -> None:
    gt = torch.tensor([[[0.2, 0.3, 2.0], [0.4, 0.5, 0.0]]])
    pred = torch.cat([gt[..., :2], torch.tensor([[[20.0], [-20.0]]])], -1)
    terms = keypoint_losses(pred, gt, torch.tensor([0.04]), torch.tensor([0.05, 0.05]), 1.0)
    assert terms["l1"].item() == 0.0 and terms["oks"].item() == pytest.approx(0.0, abs=1e-6)
    assert terms["vis"].item() < 1e-6
    far = keypoint_losses(pred + torch.tensor([0.1, 0.0, 0.0]), gt, torch.tensor([0.04]),
                          torch.tensor([0.05, 0.05]), 1.0)  # fmt: skip
    assert far["l1"].item() == pytest.approx(0.1) and far["oks"].item() > 0.5


def test_keypoint_head_refines_every_detection(
    make_detector, synthetic_batch, tiny_text_encoder
) -> None:
    det = make_detector(keypoint_head={"num_keypoints": 5, "num_layers": 2, "ffn_dim": 64})
    batch = synthetic_batch(n=2)
    feats = tiny_text_encoder(batch["prompts"][0].input_ids, batch["prompts"][0].attention_mask)
    out = det(batch["images"], batch["pad_mask"], feats.feats, feats.text_token_mask,
              feats.position_ids, feats.submask)  # fmt: skip
    assert out.keypoints.shape == (2, det.num_queries, 5, 3) and len(out.keypoint_aux) == 1
    assert ((out.keypoints[..., :2] >= 0) & (out.keypoints[..., :2] <= 1)).all()
    # the refinement starts at identity: initial offsets are 0, so every keypoint starts at the
    # (detached) box centre and the first layer's zero-initialised delta keeps it there
    centres = out.boxes[:, :, None, :2].expand_as(out.keypoint_aux[0][..., :2])
    assert torch.allclose(out.keypoint_aux[0][..., :2], centres, atol=1e-5)
