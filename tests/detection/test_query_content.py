"""Content queries of the query selection: static embeddings or the selected encoder features."""

import pytest
import torch

from tests.detection.test_heads import _forward


def test_encoder_content_queries_are_the_selected_features(
    make_detector, tiny_text_encoder, synthetic_batch
) -> None:
    batch = synthetic_batch(2)
    detector = make_detector(queries={"num": 30, "levels": 4, "points": 2, "content": "encoder"})
    selection = detector.query_selection
    seen = {}
    selection.register_forward_hook(lambda m, args, out: seen.update(tgt=out[0]))
    selection.enc_output.register_forward_hook(lambda m, args, out: seen.update(proj=out))
    out = _forward(detector, tiny_text_encoder, batch)
    tgt = seen["tgt"]
    assert not tgt.requires_grad  # detached, as DINO's two-stage variant
    rows = selection.enc_norm(seen["proj"]).detach()  # (B, S, d) projected memory
    for b in range(tgt.shape[0]):  # every content query is one selected token's feature
        dist = torch.cdist(tgt[b], rows[b], compute_mode="donot_use_mm_for_euclid_dist")
        assert dist.min(1).values.max() < 1e-4
    assert torch.isfinite(out.logits).all()
    static = make_detector(queries={"num": 30, "levels": 4, "points": 2})
    assert static.query_selection.content == "static"


def test_unknown_query_content_is_refused(make_detector) -> None:
    with pytest.raises(ValueError, match="query content"):
        make_detector(queries={"num": 30, "levels": 4, "points": 2, "content": "dynamic"})
