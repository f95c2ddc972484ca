"""A collated synthetic batch with instance masks and keypoints, for the DINO-X head tests."""

import os

import torch

from datamodules.components.captions import CaptionSampler
from datamodules.components.detection_collate import DetectionCollate
from datamodules.components.synthetic_scenes import SceneConfig, SyntheticScenes


def build_dinox_batch(text_encoder, n: int = 2, canvas: int = 128, seed: int = 0,
                      max_labels: int = 4, max_items: int = 3) -> dict:  # fmt: skip
    """Like ``conftest.build_synthetic_batch`` (real sampler and collate); targets also carry
    masks (G, H, W) bool and keypoints (G, 5, 3) with (x, y) normalised to the image."""
    cfg = SceneConfig(canvas_size=canvas, max_items=max_items, min_scale=32, max_scale=canvas // 2)
    scenes = SyntheticScenes(os.environ.get("DATA_DIR"), seed=seed, config=cfg)
    label_map = {i: scenes.categories[i] for i in scenes.split_labels("train")}
    sampler = CaptionSampler(label_map, text_encoder.tokenizer, max_labels=max_labels,
                             related=scenes.related_labels("train"))  # fmt: skip
    samples = []
    for i in range(n):
        scene = scenes.render("train", i)
        s = sampler(scene.labels, torch.Generator().manual_seed(i))
        xyxy = scene.boxes[s.keep] / canvas
        cxcywh = torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], 1)
        kp = scene.keypoints[s.keep].clone()
        kp[..., :2] /= canvas
        target = {"boxes": cxcywh, "cat_index": s.cat_index, "category_id": scene.labels[s.keep],
                  "masks": scene.masks[s.keep], "keypoints": kp, "image_id": i,
                  "orig_size": (canvas, canvas), "size": (canvas, canvas)}  # fmt: skip
        samples.append({"image": scene.image, "target": target, "caption": s.caption,
                        "spans": s.spans, "names": s.names, "label_ids": s.label_ids})  # fmt: skip
    return DetectionCollate(text_encoder.tokenizer, size_divisibility=32)(samples)


def build_dinox_module(make_detector, text_encoder, module_kwargs: dict | None = None,
                       **detector_overrides):  # fmt: skip
    """A micro ``DINOXDetectorLitModule`` (eval mode) on ``make_detector(**detector_overrides)``
    with the DINO-X criterion (64 mask points)."""
    from functools import partial

    from lightning_modules.components.detection.matcher import HungarianMatcher
    from lightning_modules.components.losses.dinox_criterion import DINOXCriterion
    from lightning_modules.dinox_detector_module import DINOXDetectorLitModule

    criterion = DINOXCriterion(HungarianMatcher(), mask={"num_points": 64})
    return DINOXDetectorLitModule(
        make_detector(**detector_overrides), text_encoder, criterion,
        partial(torch.optim.AdamW, lr=1e-4), **(module_kwargs or {}),
    ).eval()  # fmt: skip
