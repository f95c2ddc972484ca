"""Loss decreases on a fixed batch (spec §15 test 7): the whole pipeline learns end to end.

Fast: the micro detector on 2 rendered 128 px scenes, 50 steps. Slow: tiny-A (ViT 192 / d 128 /
100 queries) on 2 scenes at 256 px, 150 steps. Both with the random tiny BERT, CDN and the
encoder loss; thresholds calibrated once on the 2-core CPU, then fixed.
"""

import math

import pytest
import torch

from lightning_modules.components.detection.backbone import ViTPyramidBackbone
from lightning_modules.components.detection.detector import DNRequest, GroundingDetector
from lightning_modules.components.detection.matcher import HungarianMatcher
from lightning_modules.components.losses.set_criterion import SetCriterion

TINY_A = {
    "d_model": 128, "layers": {"encoder": 2, "decoder": 2}, "ffn": {"image": 512, "text": 256},
    "fusion": {"width": 256, "heads": 4, "layer_scale_init": 1e-4, "drop_path": 0.1},
    "queries": {"num": 100, "levels": 4, "points": 4}, "dn": {"number": 10, "labelbook": 256},
}  # fmt: skip


def _overfit(detector, encoder, batch, steps: int, lr: float) -> list[dict[str, float]]:
    criterion = SetCriterion(HungarianMatcher())
    optimizer = torch.optim.AdamW(detector.parameters(), lr=lr, weight_decay=1e-4)
    prompt, targets = batch["prompts"][0], batch["targets"]
    text = encoder(prompt.input_ids, prompt.attention_mask)
    history = []
    for step in range(steps):
        dn = DNRequest([t["boxes"] for t in targets], [t["cat_index"] for t in targets],
                       [len(x) for x in prompt.label_ids], torch.Generator().manual_seed(step))  # fmt: skip
        out = detector(batch["images"], batch["pad_mask"], text.feats, text.text_token_mask,
                       text.position_ids, text.submask, dn)  # fmt: skip
        losses = criterion(out, targets, prompt.positive_map)
        optimizer.zero_grad()
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(detector.parameters(), 0.1)
        optimizer.step()
        history.append({k: float(v) for k, v in losses.items()})
    return history


def _check(history: list[dict[str, float]]) -> None:
    first = history[0]
    for suffix in ("", "_0", "_enc", "_dn", "_dn_0"):  # final, aux, encoder and DN terms
        for term in ("focal", "l1", "giou"):
            assert math.isfinite(first[f"loss_{term}{suffix}"]), term + suffix
    final = sum(h["loss"] for h in history[-5:]) / 5  # DN noise makes single steps noisy
    assert final < 0.5 * first["loss"], (first["loss"], final)
    assert history[-1]["matched_iou"] > 0.5, history[-1]["matched_iou"]


def test_loss_decreases_on_a_fixed_batch(make_detector, tiny_text_encoder, synthetic_batch):
    batch = synthetic_batch(2, canvas=128)
    _check(_overfit(make_detector(), tiny_text_encoder, batch, steps=50, lr=1e-3))


@pytest.mark.slow
def test_tiny_a_overfits_two_images(tiny_text_encoder, synthetic_batch) -> None:
    torch.manual_seed(0)
    backbone = ViTPyramidBackbone(embed_dim=192, depth=4, num_heads=3, patch_size=16, img_size=256)
    detector = GroundingDetector(backbone, text_dim=64, **TINY_A)
    batch = synthetic_batch(2, canvas=256)
    _check(_overfit(detector, tiny_text_encoder, batch, steps=150, lr=5e-4))
