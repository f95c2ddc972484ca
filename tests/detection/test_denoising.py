"""Contrastive denoising (spec §15 test 5): attention-mask structure, noise ranges, layout."""

import torch

from lightning_modules.components.detection.denoising import (
    ContrastiveDenoising,
    box_noise_offsets,
    cdn_attention_mask,
)


def test_attention_mask_structure() -> None:
    max_gt, groups, queries = 3, 2, 5
    pad = 2 * max_gt * groups
    m = cdn_attention_mask(pad, groups, max_gt, queries)
    assert m.shape == (pad + queries, pad + queries) and m.dtype == torch.bool
    assert m[pad:, :pad].all()  # matching queries never see DN queries
    assert not m[pad:, pad:].any()  # ... but see each other
    assert not m[:pad, pad:].any()  # DN queries see the matching queries
    g0, g1 = slice(0, 2 * max_gt), slice(2 * max_gt, pad)
    assert m[g0, g1].all() and m[g1, g0].all()  # groups are blind to each other
    assert not m[g0, g0].any() and not m[g1, g1].any()  # positives + negatives of one group
    assert not m.diagonal().any()


def test_noise_ranges() -> None:
    g = torch.Generator().manual_seed(0)
    n, scale = 4000, 0.4
    boxes = torch.cat([torch.rand(n, 2, generator=g), 0.05 + torch.rand(n, 2, generator=g)], 1)
    negative = torch.arange(n) % 2 == 1
    offsets = box_noise_offsets(boxes, negative, scale, g)
    half = boxes[:, 2:].repeat(1, 2) / 2
    ratio = offsets.abs() / (scale * half)
    assert ratio[~negative].min() >= 0 and ratio[~negative].max() < 1
    assert ratio[negative].min() >= 1 and ratio[negative].max() < 2
    assert (offsets > 0).any() and (offsets < 0).any()  # both signs
    assert abs(ratio[~negative].mean().item() - 0.5) < 0.02  # uniform on [0, 1)


def _request(seed: int):
    boxes = [torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.5, 0.3, 0.4], [0.5, 0.5, 0.1, 0.1]]),
             torch.tensor([[0.5, 0.5, 0.4, 0.4]])]  # fmt: skip
    labels = [torch.tensor([0, 3, 4]), torch.tensor([1])]
    return boxes, labels, [5, 2], torch.Generator().manual_seed(seed)


def test_queries_layout_and_determinism() -> None:
    torch.manual_seed(0)
    dn = ContrastiveDenoising(dim=16, number=10, box_noise=0.4, label_noise=1.0, labelbook=32)
    boxes, labels, n_cats, g = _request(0)
    content, anchors, mask, meta = dn(boxes, labels, n_cats, 5, g)
    assert (meta.max_gt, meta.num_groups, meta.pad) == (3, 3, 18)
    assert content.shape == (2, 18, 16) and anchors.shape == (2, 18, 4)
    assert mask.shape == (23, 23)
    again = dn(*_request(0)[:3], 5, _request(0)[3])
    assert torch.equal(again[0], content) and torch.equal(again[1], anchors)
    other = dn(*_request(1)[:3], 5, _request(1)[3])
    assert not torch.equal(other[1], anchors)
    # image 1 has 2 caption categories: flipped labels stay among them (embedding rows 0 or 1)
    rows = dn.label_embed.weight
    for q in range(meta.num_groups):
        for half in (0, meta.max_gt):
            c = content[1, 2 * meta.max_gt * q + half]
            assert torch.equal(c, rows[0]) or torch.equal(c, rows[1])
    # positive anchors stay within λ·half-size of their GT (before the sigmoid's clamping)
    pos = anchors[0, : meta.max_gt].sigmoid()
    xyxy = lambda b: torch.cat([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], 1)  # noqa: E731
    diff = (xyxy(pos) - xyxy(boxes[0])).abs()
    assert (diff <= 0.4 * boxes[0][:, 2:].repeat(1, 2) / 2 + 1e-3).all()
    # padding slots of image 1 (max_gt = 3, one GT) get the padding embedding
    assert torch.equal(content[1, 1], rows[32]) and torch.equal(content[1, 2], rows[32])


def test_no_denoising_without_boxes() -> None:
    dn = ContrastiveDenoising(dim=8, number=10)
    empty = [torch.zeros(0, 4), torch.zeros(0, 4)]
    labels = [torch.zeros(0, dtype=torch.long)] * 2
    assert dn(empty, labels, [3, 3], 5, torch.Generator()) is None
    assert ContrastiveDenoising(dim=8, number=0)(*_request(0)[:3], 5, torch.Generator()) is None


def test_text_content_is_the_mean_of_category_tokens() -> None:
    dn = ContrastiveDenoising(dim=4, number=4, label_noise=0.0, content="text")
    memory_text = torch.arange(2 * 5 * 4, dtype=torch.float32).view(2, 5, 4)
    pmap = torch.zeros(2, 2, 5)
    pmap[:, 0, 1] = 1
    pmap[:, 1, 2:4] = 1  # a two-token category
    boxes = [torch.tensor([[0.5, 0.5, 0.2, 0.2]]), torch.tensor([[0.4, 0.4, 0.2, 0.2]])]
    labels = [torch.tensor([1]), torch.tensor([0])]
    content, _, _, meta = dn(boxes, labels, [2, 2], 3, torch.Generator(), memory_text, pmap)
    assert meta.max_gt == 1 and meta.num_groups == 4
    torch.testing.assert_close(content[0, 0], memory_text[0, 2:4].mean(0))
    torch.testing.assert_close(content[1, 1], memory_text[1, 1])  # the negative copy, label 0
