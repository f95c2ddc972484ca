"""Contrastive head and token focal loss (spec §15 test 6, decision P5)."""

import torch

from lightning_modules.components.detection.detector import DNRequest
from lightning_modules.components.detection.heads import ContrastiveHead
from lightning_modules.components.detection.matcher import HungarianMatcher
from lightning_modules.components.losses.detection_losses import token_focal_loss
from lightning_modules.components.losses.set_criterion import SetCriterion


def test_head_starts_at_the_prior() -> None:
    head = ContrastiveHead(dim=32)
    logits = head(torch.zeros(2, 5, 32), torch.randn(2, 7, 32))
    torch.testing.assert_close(logits.sigmoid(), torch.full((2, 5, 7), 0.01), atol=1e-6, rtol=0)


def _forward(detector, encoder, batch, dn: bool = False):
    prompt = batch["prompts"][0]
    text = encoder(prompt.input_ids, prompt.attention_mask)
    request = None
    if dn:
        targets = batch["targets"]
        request = DNRequest([t["boxes"] for t in targets], [t["cat_index"] for t in targets],
                            [len(x) for x in prompt.label_ids], torch.Generator().manual_seed(0))  # fmt: skip
    return detector(batch["images"], batch["pad_mask"], text.feats, text.text_token_mask,
                    text.position_ids, text.submask, request)  # fmt: skip


def test_initial_sigmoid_mean_is_about_001(make_detector, tiny_text_encoder, synthetic_batch):
    batch = synthetic_batch(2)
    out = _forward(make_detector(), tiny_text_encoder, batch)
    valid = out.text_token_mask[:, None, :].expand_as(out.logits)
    probs = out.logits.sigmoid()[valid]
    # The bias −log 99 puts the typical probability at 0.01. The random ⟨h, text⟩/√d term adds a
    # spread of ≈ 0.85 logits and, from directions shared by all queries and all tokens, an
    # offset of random sign (≈ ±0.6 logits across seeds), hence the tolerance (≈ 0.01 ± 2.5×).
    assert 0.004 < probs.median().item() < 0.025, probs.median()
    assert 0.004 < probs.mean().item() < 0.04, probs.mean()
    assert torch.isfinite(out.logits).all()  # finite everywhere, padded tokens included


def test_no_nan_gradients_with_padded_text(make_detector, tiny_text_encoder, synthetic_batch):
    batch = synthetic_batch(2, max_labels=6)
    prompt = batch["prompts"][0]
    assert not prompt.attention_mask.bool().all(), "captions of different lengths are padded"
    detector = make_detector()
    out = _forward(detector, tiny_text_encoder, batch, dn=True)
    losses = SetCriterion(HungarianMatcher())(out, batch["targets"], prompt.positive_map)
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"])
    for name, p in detector.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name
    assert detector.class_heads[0].log_scale.grad.abs() > 0


def test_focal_loss_ignores_padded_tokens() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 6, generator=g)
    targets = (torch.rand(2, 4, 6, generator=g) > 0.7).float()
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    base = logits.clone().requires_grad_(True)
    loss = token_focal_loss(base, targets, mask, num_boxes=3.0)
    loss.backward()
    changed = logits.clone()
    changed[1, :, 4:] = torch.tensor([1e4, -1e4])  # wild values on padded tokens
    changed.requires_grad_(True)
    loss2 = token_focal_loss(changed, targets, mask, num_boxes=3.0)
    loss2.backward()
    assert loss2.item() == loss.item()
    assert torch.equal(base.grad[1, :, 4:], torch.zeros(4, 2))
    assert torch.equal(changed.grad, base.grad)
