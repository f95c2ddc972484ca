"""Sine position embeddings: values by hand, layout, and padding awareness."""

import math

import torch

from lightning_modules.components.detection.position_encoding import (
    box_sine_embedding,
    sine_embedding,
    sine_position_embedding_2d,
    text_position_embedding,
)


def test_sine_embedding_by_hand() -> None:
    emb = sine_embedding(torch.tensor([[0.25]]), num_feats=4, temperature=100.0)
    x = 0.25 * 2 * math.pi
    expected = [math.sin(x), math.cos(x), math.sin(x / 10), math.cos(x / 10)]  # 100^(2·1/4) = 10
    torch.testing.assert_close(emb[0], torch.tensor(expected))


def test_box_embedding_order_is_y_x_w_h() -> None:
    boxes = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    emb = box_sine_embedding(boxes, num_feats=8)
    assert emb.shape == (1, 32)
    parts = [sine_embedding(boxes[:, [i]], 8) for i in (1, 0, 2, 3)]
    torch.testing.assert_close(emb, torch.cat(parts, dim=-1))


def test_map_embedding_spans_the_unpadded_image() -> None:
    pad = torch.zeros(2, 4, 6, dtype=torch.bool)
    pad[1, :, 3:] = True  # image 1 is 4×3 valid, padded to 4×6
    emb = sine_position_embedding_2d(pad, num_feats=8)
    assert emb.shape == (2, 16, 4, 6)
    small = sine_position_embedding_2d(torch.zeros(1, 4, 3, dtype=torch.bool), num_feats=8)
    torch.testing.assert_close(emb[1, :, :, :3], small[0])
    # The last valid column sits at normalised x = 1 → angle 2π for the first x feature.
    torch.testing.assert_close(
        emb[0, 8, 0, -1], torch.tensor(math.sin(2 * math.pi)), atol=1e-4, rtol=0
    )
    assert not torch.allclose(emb[0, :, :, :3], emb[1, :, :, :3])


def test_text_positions_equal_ids_equal_embeddings() -> None:
    ids = torch.tensor([[0, 0, 1, 0, 1, 2, 0]])
    emb = text_position_embedding(ids, dim=16)
    assert emb.shape == (1, 7, 16)
    torch.testing.assert_close(emb[0, 0], emb[0, 3])
    torch.testing.assert_close(emb[0, 2], emb[0, 4])
