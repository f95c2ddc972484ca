"""Fixtures for the detector tests: a micro detector, synthetic batches, micro Hydra overrides.

Sizes are cut far below tiny-A (ViT 64 wide at 128 px, d 64, 30 queries) so every fast test
stays within seconds on a shared 2-core CPU; tiny-A itself runs in the slow tests.
"""

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MICRO_DETECTOR = {
    "d_model": 64,
    "n_heads": 4,
    "layers": {"encoder": 1, "decoder": 2},
    "ffn": {"image": 128, "text": 128},
    "fusion": {"width": 64, "heads": 2, "layer_scale_init": 1e-4, "drop_path": 0.1},
    "text_heads": 2,
    "queries": {"num": 30, "levels": 4, "points": 2},
    "dn": {"number": 6, "box_noise": 1.0, "label_noise": 0.5, "labelbook": 64},
}
MICRO_BACKBONE = {"embed_dim": 64, "depth": 2, "num_heads": 2, "patch_size": 16, "img_size": 128}


def build_micro_overrides(synthetic_dir: Path) -> list[str]:
    """Hydra overrides that shrink experiment=gdino_tiny_synthetic to the micro sizes."""
    b = "model.detector.backbone"
    d = "model.detector"
    return [
        "experiment=gdino_tiny_synthetic",
        "model.text_encoder.name=tiny-random",
        f"{d}.text_dim=64",
        f"{b}.embed_dim=64", f"{b}.depth=2", f"{b}.num_heads=2", f"{b}.img_size=128",
        f"{d}.d_model=64", f"{d}.n_heads=4", f"{d}.layers.encoder=1", f"{d}.ffn.image=128",
        f"{d}.ffn.text=128", f"{d}.fusion.width=64", f"{d}.fusion.heads=2", f"{d}.text_heads=2",
        f"{d}.queries.num=30", f"{d}.queries.points=2", f"{d}.dn.number=6", f"{d}.dn.labelbook=64",
        f"data.synthetic.dir={synthetic_dir}", "data.synthetic.n_train=8",
        "data.synthetic.n_val=4", "data.synthetic.canvas_size=128",
        "data.batch_size=2", "data.val_batch_size=4", "data.max_labels=4",
        "data.augment.scales=[128]", "data.augment.max_size=160", "data.augment.crop_scales=[128]",
        "data.augment.crop_size=[96,128]", "data.val_size=128", "data.val_max_size=160",
    ]  # fmt: skip


@pytest.fixture(scope="session")
def tiny_text_encoder():
    """Random 2-layer BERT (hidden 64) with the MiniLM tokenizer."""
    from lightning_modules.components.detection.text_encoder import TextEncoder

    return TextEncoder.tiny_random(seed=0)


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """One folder for the micro synthetic benchmark, rendered once per session."""
    return tmp_path_factory.mktemp("grounding_synthetic")


@pytest.fixture
def micro_overrides(synthetic_dir: Path) -> list[str]:
    """``build_micro_overrides`` on the session's synthetic benchmark folder."""
    return build_micro_overrides(synthetic_dir)


@pytest.fixture
def make_detector():
    """``make_detector(**overrides)`` → a micro ``GroundingDetector`` (text_dim 64), seeded."""
    from lightning_modules.components.detection.backbone import ViTPyramidBackbone
    from lightning_modules.components.detection.detector import GroundingDetector

    def _make(seed: int = 0, backbone: dict | None = None, **overrides):
        torch.manual_seed(seed)
        bb = ViTPyramidBackbone(**{**MICRO_BACKBONE, **(backbone or {})})
        return GroundingDetector(bb, text_dim=64, **{**MICRO_DETECTOR, **overrides})

    return _make


def build_synthetic_batch(text_encoder, n: int = 2, canvas: int = 128, seed: int = 0,
                          max_labels: int = 4, max_items: int = 3) -> dict:  # fmt: skip
    """A collated training batch of ``n`` rendered scenes, captions of their positives plus
    sampled negatives (the real ``CaptionSampler`` and ``DetectionCollate``)."""
    from datamodules.components.captions import CaptionSampler
    from datamodules.components.detection_collate import DetectionCollate
    from datamodules.components.synthetic_scenes import SceneConfig, SyntheticScenes

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
        target = {"boxes": cxcywh, "cat_index": s.cat_index, "category_id": scene.labels[s.keep],
                  "image_id": i, "orig_size": (canvas, canvas), "size": (canvas, canvas)}  # fmt: skip
        samples.append({"image": scene.image, "target": target, "caption": s.caption,
                        "spans": s.spans, "names": s.names, "label_ids": s.label_ids})  # fmt: skip
    return DetectionCollate(text_encoder.tokenizer, size_divisibility=32)(samples)


@pytest.fixture
def synthetic_batch(tiny_text_encoder):
    """``synthetic_batch(n=2, canvas=128, seed=0, ...)`` → ``build_synthetic_batch``."""

    def _make(*args, **kwargs) -> dict:
        return build_synthetic_batch(tiny_text_encoder, *args, **kwargs)

    return _make


@pytest.fixture
def make_module(make_detector, tiny_text_encoder):
    """``make_module(**detector_overrides)`` → a micro ``GroundingDetectorLitModule`` (eval)."""
    from functools import partial

    from lightning_modules.components.detection.matcher import HungarianMatcher
    from lightning_modules.components.losses.set_criterion import SetCriterion
    from lightning_modules.grounding_detector_module import GroundingDetectorLitModule

    def _make(**overrides):
        return GroundingDetectorLitModule(
            make_detector(**overrides), tiny_text_encoder, SetCriterion(HungarianMatcher()),
            partial(torch.optim.AdamW, lr=1e-4),
        ).eval()  # fmt: skip

    return _make
