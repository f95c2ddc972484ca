"""Spec §15 test 2: Hungarian matching equals brute force; the class cost matches the formula."""

import itertools
import math

import pytest
import torch

from lightning_modules.components.detection.matcher import HungarianMatcher


def _random_boxes(n: int, g: torch.Generator) -> torch.Tensor:
    centre = torch.rand(n, 2, generator=g) * 0.6 + 0.2
    size = torch.rand(n, 2, generator=g) * 0.3 + 0.05
    return torch.cat([centre, size], dim=-1)


def _random_tokens(n: int, t: int, g: torch.Generator) -> torch.Tensor:
    tokens = (torch.rand(n, t, generator=g) < 0.4).float()
    tokens[torch.arange(n), torch.randint(t, (n,), generator=g)] = 1.0  # ≥ 1 positive token
    return tokens


@pytest.mark.parametrize("q,g_count", [(1, 1), (3, 2), (4, 4), (5, 3), (6, 4), (6, 1)])
def test_matches_bruteforce_minimum(q: int, g_count: int) -> None:
    gen = torch.Generator().manual_seed(q * 10 + g_count)
    t = 7
    logits = torch.randn(1, q, t, generator=gen) * 3
    boxes = _random_boxes(q, gen)[None]
    gt_boxes, gt_tokens = _random_boxes(g_count, gen), _random_tokens(g_count, t, gen)
    matcher = HungarianMatcher()
    ((rows, cols),) = matcher(logits, boxes, [gt_boxes], [gt_tokens])
    cost = matcher.cost_matrix(logits[0], boxes[0], gt_boxes, gt_tokens)
    assert sorted(cols.tolist()) == list(range(g_count))
    assert rows.tolist() == sorted(rows.tolist())
    total = cost[rows, cols].sum().item()
    # Every ordered choice of G distinct queries, one per GT.
    best = min(
        sum(cost[query, gt].item() for gt, query in enumerate(perm))
        for perm in itertools.permutations(range(q), g_count)
    )
    assert total == pytest.approx(best, abs=1e-5)


def test_class_cost_by_hand() -> None:
    logits = torch.tensor([[0.5, -1.0, 2.0], [-0.3, 1.5, 0.0]])  # (Q=2, T=3)
    tokens = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # GT0 owns tokens 0,1; GT1 token 2
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2]] * 2)
    matcher = HungarianMatcher(cost_class=1.0, cost_bbox=0.0, cost_giou=0.0)
    cost = matcher.cost_matrix(logits, boxes, boxes, tokens)

    def focal(x: float, alpha: float = 0.25, gamma: float = 2.0) -> float:
        p = 1 / (1 + math.exp(-x))
        return alpha * (1 - p) ** gamma * -math.log(p) - (1 - alpha) * p**gamma * -math.log(1 - p)

    expected = torch.tensor(
        [
            [(focal(0.5) + focal(-1.0)) / 2, focal(2.0)],
            [(focal(-0.3) + focal(1.5)) / 2, focal(0.0)],
        ]
    )
    torch.testing.assert_close(cost, expected, atol=1e-6, rtol=0)


def test_weights_combine_l1_and_giou() -> None:
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.1]])
    gt = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    tokens = torch.tensor([[1.0, 0.0]])
    cost = HungarianMatcher(cost_class=0.0).cost_matrix(torch.zeros(2, 2), boxes, gt, tokens)
    assert cost[0, 0].item() == pytest.approx(2.0 * -1.0)  # L1 0, GIoU 1
    assert cost[1, 0].item() > cost[0, 0].item()


def test_no_ground_truth_gives_empty_indices() -> None:
    out = HungarianMatcher()(
        torch.randn(2, 5, 4), torch.rand(2, 5, 4), [torch.zeros(0, 4)] * 2, [torch.zeros(0, 4)] * 2
    )
    for rows, cols in out:
        assert rows.shape == cols.shape == (0,) and rows.dtype == torch.int64


def test_nonfinite_costs() -> None:
    g = torch.Generator().manual_seed(0)
    logits, boxes = torch.zeros(1, 4, 3), _random_boxes(4, g)[None]
    gt_boxes = boxes[0, :2].clone()  # queries 0 and 1 fit GTs 0 and 1 perfectly
    gt_tokens = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    logits[0, 0, 0] = float("nan")  # NaN cost for (query 0, GT 0) only: replaced, never chosen
    ((rows, cols),) = HungarianMatcher()(logits, boxes, [gt_boxes], [gt_tokens])
    assert (0, 0) not in list(zip(rows.tolist(), cols.tolist(), strict=True))
    logits[0, 1, 1] = float("-inf")  # a saturated logit stays finite thanks to the eps in the log
    cost = HungarianMatcher().cost_matrix(logits[0], boxes[0], gt_boxes, gt_tokens)
    assert torch.isfinite(cost[1]).all()
    boxes[0, 2] = float("nan")  # a query with no finite cost at all is an error, not a guess
    with pytest.raises(ValueError, match="queries \\[2\\]"):
        HungarianMatcher()(logits, boxes, [gt_boxes], [gt_tokens])
