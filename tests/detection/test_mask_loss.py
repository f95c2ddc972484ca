"""Point-sampled mask losses (spec §12.3): equal to the full-mask loss when every pixel centre
is sampled; importance sampling picks the most uncertain points; the mask head's shapes."""

import pytest
import torch

from lightning_modules.components.losses.mask_losses import (
    mask_losses_at_points,
    pixel_centre_points,
    uncertain_points,
)


def _full_mask_losses(logits: torch.Tensor, target: torch.Tensor, num_masks: float):
    """Independent full-resolution formulas: mean BCE per mask, Dice with +1 smoothing."""
    logits, target = logits.flatten(1).double(), target.flatten(1).double()
    p = torch.sigmoid(logits)
    bce = -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean(1)
    dice = 1 - (2 * (p * target).sum(1) + 1) / (p.sum(1) + target.sum(1) + 1)
    return bce.sum() / num_masks, dice.sum() / num_masks


def test_all_pixel_centres_reproduce_the_full_mask_loss() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 5, generator=g) * 3
    target = (torch.rand(3, 6, 5, generator=g) > 0.5).float()
    bce, dice = mask_losses_at_points(logits, target, pixel_centre_points(6, 5, 3), 2.0)
    ref_bce, ref_dice = _full_mask_losses(logits, target, 2.0)
    assert bce.item() == pytest.approx(ref_bce.item(), rel=1e-5)
    assert dice.item() == pytest.approx(ref_dice.item(), rel=1e-5)


def test_scale_maps_ground_truth_points_into_the_padded_prediction() -> None:
    """The GT covers the left half of the prediction map (the rest is batch padding)."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 8, generator=g)
    target = (torch.rand(2, 4, 4, generator=g) > 0.5).float()
    scale = torch.tensor([[0.5, 1.0], [0.5, 1.0]])
    got = mask_losses_at_points(logits, target, pixel_centre_points(4, 4, 2), 2.0, scale)
    ref = _full_mask_losses(logits[..., :4], target, 2.0)
    for a, b in zip(got, ref, strict=True):
        assert a.item() == pytest.approx(b.item(), rel=1e-5)


def test_uncertain_points_keep_the_most_uncertain_candidates() -> None:
    logits = torch.linspace(-4, 4, 16).view(1, 1, 16).expand(1, 16, 16).contiguous()
    points = uncertain_points(logits, 20, 3.0, 0.75, torch.Generator().manual_seed(0))
    again = uncertain_points(logits, 20, 3.0, 0.75, torch.Generator().manual_seed(0))
    assert points.shape == (1, 20, 2) and torch.equal(points, again)
    assert ((points >= 0) & (points <= 1)).all()
    # the logit is 0 at x = 0.5: the 15 importance points lie nearer to it than random ones
    g = torch.Generator().manual_seed(0)
    candidates = torch.rand(1, 60, 2, generator=g)
    nearest = (candidates[0, :, 0] - 0.5).abs().sort().values[:15]
    chosen = (points[0, :15, 0] - 0.5).abs().sort().values
    assert torch.allclose(chosen, nearest, atol=1e-6)


def test_mask_head_predicts_every_layer_at_stride_4(
    make_detector, synthetic_batch, tiny_text_encoder
) -> None:
    det = make_detector(backbone={"with_stride4": True}, mask_head={})
    batch = synthetic_batch(n=2)
    feats = tiny_text_encoder(batch["prompts"][0].input_ids, batch["prompts"][0].attention_mask)
    out = det(batch["images"], batch["pad_mask"], feats.feats, feats.text_token_mask,
              feats.position_ids, feats.submask)  # fmt: skip
    h, w = batch["images"].shape[-2:]
    assert out.masks.shape == (2, det.num_queries, h // 4, w // 4)
    assert all(p.masks.shape == out.masks.shape for p in out.layers())
    with pytest.raises(ValueError, match="with_stride4=true"):
        make_detector(mask_head={})
