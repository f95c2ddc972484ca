"""iBOTPatchLoss = (1/2B)·Σ_j w_j·CE_j with unmasked crops in the denominator (§4.4, §13.7)."""

import torch

from lightning_modules.components.losses import iBOTPatchLoss


def test_matches_per_crop_mean_over_all_crops() -> None:
    torch.manual_seed(0)
    n_crops, n_patches, k = 6, 10, 13  # 2B = 6 crops, 3 of them masked
    masks = torch.zeros(n_crops, n_patches, dtype=torch.bool)
    masks[0, [1, 2, 3]] = True
    masks[3, :7] = True
    masks[5, [9]] = True
    n_m = int(masks.sum())
    s = torch.randn(n_m, k)
    p = torch.softmax(torch.randn(n_m, k), dim=-1)
    weights = (1.0 / masks.sum(-1, keepdim=True).clamp(min=1)).expand_as(masks)[masks]

    loss = iBOTPatchLoss(student_temp=0.1)(s, p, weights, n_crops=n_crops)

    ce = -(p * torch.log_softmax(s / 0.1, dim=-1)).sum(-1)
    crop_of_token = masks.nonzero()[:, 0]
    per_crop = [ce[crop_of_token == c].mean() for c in range(n_crops) if masks[c].any()]
    expected = sum(per_crop) / n_crops  # unmasked crops add 0 but count
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(loss, (weights * ce).sum() / (2 * 3))


def test_no_masked_tokens_gives_zero() -> None:
    loss = iBOTPatchLoss()(torch.zeros(0, 5), torch.zeros(0, 5), torch.zeros(0), n_crops=4)
    assert loss.item() == 0.0
