"""The caption-name cross-entropy: against a per-query formula written out, and in the criterion."""

import math

import torch

from lightning_modules.components.detection.matcher import HungarianMatcher
from lightning_modules.components.losses.detection_losses import name_cross_entropy
from lightning_modules.components.losses.set_criterion import SetCriterion
from tests.detection.test_heads import _forward


def test_matches_a_per_query_loop() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g)
    # caption 0: names on tokens {0,1}, {2}, {3,4,5}; caption 1: {0}, {1,2}, and a padded row
    spans = [[[0, 1], [2], [3, 4, 5]], [[0], [1, 2]]]
    positive_map = torch.zeros(2, 3, 7)
    for b, names in enumerate(spans):
        for c, tokens in enumerate(names):
            positive_map[b, c, tokens] = 1.0
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 3:] = False
    logits[1, :, 3:] = float("inf")  # padded tokens: unmasked, 0 · inf would make scores NaN
    queries = [torch.tensor([4, 1]), torch.tensor([2])]
    classes = [torch.tensor([2, 0]), torch.tensor([1])]
    loss = name_cross_entropy(logits, positive_map, mask, queries, classes, num_boxes=3.0)
    expected = 0.0
    for b, (qs, cs) in enumerate(zip(queries, classes, strict=True)):
        for q, c in zip(qs.tolist(), cs.tolist(), strict=True):
            scores = [sum(logits[b, q, t].item() for t in ts) / len(ts) for ts in spans[b]]
            log_z = math.log(sum(math.exp(s) for s in scores))
            expected += log_z - scores[c]
    assert math.isclose(loss.item(), expected / 3.0, rel_tol=1e-5)


def test_is_low_when_the_right_name_wins_and_high_when_a_rival_does() -> None:
    positive_map = torch.zeros(1, 2, 4)
    positive_map[0, 0, :2] = 1.0  # "red sneaker"
    positive_map[0, 1, 2:] = 1.0  # "red seven"
    mask = torch.ones(1, 4, dtype=torch.bool)
    right = torch.tensor([[[5.0, 5.0, -5.0, -5.0]]])
    args = (positive_map, mask, [torch.tensor([0])], [torch.tensor([0])], 1.0)
    assert name_cross_entropy(right, *args) < 1e-3
    assert name_cross_entropy(-right, *args) > 9.0


def test_criterion_adds_it_only_with_a_positive_weight(
    make_detector, tiny_text_encoder, synthetic_batch
) -> None:
    batch = synthetic_batch(2, max_labels=6)
    pmap = batch["prompts"][0].positive_map
    torch.manual_seed(0)
    detector = make_detector()
    out = _forward(detector, tiny_text_encoder, batch, dn=True)
    plain = SetCriterion(HungarianMatcher())(out, batch["targets"], pmap)
    named = SetCriterion(HungarianMatcher(), {"names": 0.5})(out, batch["targets"], pmap)
    assert not any(k.startswith("loss_names") for k in plain)
    extra = {k: v for k, v in named.items() if k.startswith("loss_names")}
    # every decoder layer, the encoder proposals and every denoising layer get the term
    assert set(extra) == {k.replace("focal", "names") for k in plain if k.startswith("loss_focal")}
    assert all(v > 0 for v in extra.values())
    total = plain["loss"] + 0.5 * sum(extra.values())
    assert torch.allclose(named["loss"], total, rtol=1e-5)
    named["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in detector.parameters() if p.grad is not None)
