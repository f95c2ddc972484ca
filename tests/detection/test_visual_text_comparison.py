"""The text side of the visual-vs-text comparison ranks its top-K over the prompted categories only."""

import torch

from lightning_modules.components.detection.dinox_inference import (
    DINOXPostProcess,
    PassOutput,
    restrict_parts,
)
from lightning_modules.components.detection.outputs import DetectorOutput


def _chunk(label_ids: list[int], queries: int, seed: int) -> PassOutput:
    """A pass over one image whose category c is token c + 1 of its caption."""
    g = torch.Generator().manual_seed(seed)
    tokens = len(label_ids) + 2
    out = DetectorOutput(
        logits=torch.randn(1, queries, tokens, generator=g),
        boxes=torch.rand(1, queries, 4, generator=g) * 0.5 + 0.25,
        text_token_mask=torch.ones(1, tokens, dtype=torch.bool),
    )
    pmap = torch.zeros(len(label_ids), tokens)
    pmap[torch.arange(len(label_ids)), torch.arange(len(label_ids)) + 1] = 1
    return PassOutput(out, 0, pmap, torch.tensor(label_ids))


def test_restrict_parts_keeps_only_the_given_categories_and_drops_empty_passes() -> None:
    parts = [_chunk([0, 1, 2], 5, 0), _chunk([3, 4], 5, 1), _chunk([5], 5, 2)]
    kept = restrict_parts(parts, torch.tensor([1, 3, 9]))
    assert [p.label_ids.tolist() for p in kept] == [[1], [3]]
    assert torch.equal(kept[0].positive_map, parts[0].positive_map[1:2])
    assert kept[1].out is parts[1].out  # the pass itself is reused, not recomputed


def test_top_k_over_the_prompted_categories_fills_k_and_keeps_the_scores() -> None:
    queries, k, wanted = 12, 10, torch.tensor([1, 3])
    parts = [_chunk([0, 1, 2], queries, 0), _chunk([3, 4], queries, 1)]
    post = DINOXPostProcess()
    everything = post(parts, (64, 64), (64, 64), num_select=k)
    filtered_after = torch.isin(everything["labels"], wanted)
    restricted = post(restrict_parts(parts, wanted), (64, 64), (64, 64), num_select=k)
    # every candidate of the prompted categories competes: K detections, all of them prompted
    assert len(restricted["labels"]) == k
    assert torch.isin(restricted["labels"], wanted).all()
    assert filtered_after.sum() < k  # filtering after a top-K over 5 categories keeps fewer
    # the detections that survive the late filter are the best of the restricted ranking
    n = int(filtered_after.sum())
    torch.testing.assert_close(restricted["scores"][:n], everything["scores"][filtered_after])
    assert torch.equal(restricted["labels"][:n], everything["labels"][filtered_after])
