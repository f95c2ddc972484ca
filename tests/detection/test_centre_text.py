"""Caption-centred text for the class heads (``class_head.center_text``; issue 6 probes)."""

import pytest
import torch

from lightning_modules.components.detection.heads import ContrastiveHead, centre_text
from tests.detection.test_heads import _forward


def test_centre_text_removes_the_caption_mean_and_keeps_the_norm() -> None:
    g = torch.Generator().manual_seed(0)
    text = torch.randn(2, 6, 8, generator=g) + torch.randn(2, 1, 8, generator=g) * 5
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    out = centre_text(text, mask)
    for b, n in ((0, 6), (1, 4)):
        torch.testing.assert_close(out[b, :n].mean(0), torch.zeros(8), atol=1e-5, rtol=0)
        centred = text[b, :n] - text[b, :n].mean(0)
        factor = out[b, :n].norm() / centred.norm()
        torch.testing.assert_close(out[b, :n], centred * factor)  # one factor per caption
        torch.testing.assert_close(out[b, :n].norm(dim=-1).mean(), text[b, :n].norm(dim=-1).mean())
    assert torch.equal(out[1, 4:], torch.zeros(2, 8))
    # a direction all real tokens share changes every logit of a caption by one factor only
    head, hidden = ContrastiveHead(8, bias_init=0.0), torch.randn(2, 3, 8, generator=g)
    shifted = head(hidden, centre_text(text + torch.randn(2, 1, 8, generator=g), mask))
    ratio = shifted[0] / head(hidden, out)[0]
    torch.testing.assert_close(ratio, ratio.mean().expand_as(ratio))


def test_detector_heads_score_centred_text(make_detector, tiny_text_encoder, synthetic_batch):
    batch = synthetic_batch(2, max_labels=6)
    detector = make_detector(class_head={"center_text": True}).eval()
    with torch.no_grad():
        out = _forward(detector, tiny_text_encoder, batch)
        expected = detector.class_heads[0](
            out.hidden, centre_text(out.memory_text, out.text_token_mask)
        )
    torch.testing.assert_close(out.logits, expected)
    assert torch.isfinite(out.logits).all()
    plain = make_detector(class_head={"center_text": False}).eval()
    with torch.no_grad():
        ref = _forward(plain, tiny_text_encoder, batch)
    torch.testing.assert_close(
        ref.logits, plain.class_heads[0](ref.hidden, ref.memory_text)
    )  # default off: raw tokens, as before


def test_centred_text_refuses_single_token_prompts(make_detector) -> None:
    with pytest.raises(ValueError, match="center_text"):
        make_detector(class_head={"center_text": True}, universal_prompt={"num_tokens": 1})
