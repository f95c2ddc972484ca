"""Batch-subset stochastic depth (spec §2.2): the reference's drop-path that skips dropped samples.

Checked against the plain block with per-sample residual factors (an independent formula), for
its cost (the branches see only the kept samples) and for its expectation over draws.
"""

import pytest
import torch

from lightning_modules.components.vit import DINOv2Backbone
from lightning_modules.components.vit_block import (
    DINOv2Block,
    subset_keep_factor,
    subset_residual,
)

B, RATE = 10, 0.3  # keeps ⌊0.7·10⌋ = 7 samples, each branch scaled by 10/7


def _backbone(mode: str = "batch_subset", rate: float = RATE) -> DINOv2Backbone:
    torch.manual_seed(0)
    return DINOv2Backbone(
        img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, layerscale_init=0.5,
        drop_path=rate, drop_path_mode=mode,
    ).train()  # fmt: skip


def _reference_block(block: torch.nn.Module, x: torch.Tensor, seed: int) -> torch.Tensor:
    """x + f1·branch1(x), then + f2·branch2, with f from replaying the same two subset draws."""
    gen = torch.Generator().manual_seed(seed)
    keep = int(B * (1 - RATE))
    factors = []
    for _ in range(2):
        kept = torch.randperm(B, generator=gen)[:keep]
        factors.append(torch.zeros(B, 1, 1).index_fill_(0, kept, B / keep))
    x = x + factors[0] * block.ls1(block.attn(block.norm1(x)))
    return x + factors[1] * block.ls2(block.mlp(block.norm2(x)))


def test_block_equals_per_sample_factors_of_the_same_draw() -> None:
    backbone = _backbone()
    block = backbone.vit.blocks[0]
    x = torch.randn(B, 17, 32)
    torch.manual_seed(5)
    out = block(x)
    torch.testing.assert_close(out, _reference_block(block, x, seed=5), rtol=0, atol=1e-6)
    dropped = (out - x).abs().sum(dim=(1, 2)) == 0  # neither branch ran for these samples
    assert 0 <= int(dropped.sum()) <= B - int(B * (1 - RATE))


def test_branches_run_only_on_the_kept_samples() -> None:
    backbone = _backbone()
    seen: list[int] = []
    for block in backbone.vit.blocks:
        for module in (block.attn, block.mlp):
            module.register_forward_hook(lambda _m, args, _out: seen.append(args[0].shape[0]))
    backbone.forward_features(torch.randn(B, 3, 16, 16))
    assert seen == [7] * 4  # 2 blocks × 2 branches, ⌊0.7·10⌋ samples each
    seen.clear()
    backbone.eval().forward_features(torch.randn(B, 3, 16, 16))
    assert seen == [B] * 4  # no drop-path outside training


@pytest.mark.parametrize("draw", ["residual", "factor"])
def test_expectation_over_draws_is_the_undropped_residual(draw: str) -> None:
    """Averaged over draws, each sample gets its whole branch: the B/subset rescaling is unbiased.

    ``residual`` is the path that skips dropped samples, ``factor`` the (B, 1) factors the
    selected-token last block uses; both must average to ``branch(x)``.
    """
    x = torch.randn(B, 4)
    torch.manual_seed(0)
    if draw == "residual":
        outs = [subset_residual(x, lambda t: 2 * t, RATE) - x for _ in range(20000)]
    else:
        outs = [subset_keep_factor(x, RATE) * (2 * x) for _ in range(20000)]
    mean = torch.stack(outs).mean(0)
    torch.testing.assert_close(mean, 2 * x, rtol=0.03, atol=0.03)
    assert not torch.allclose(outs[0], 2 * x)  # one draw drops samples


def test_blocks_keep_timm_parameter_names() -> None:
    """The subclass adds no parameters: state dicts match a plain timm ViT of the same shape."""
    from timm.models.vision_transformer import VisionTransformer

    ours = _backbone().vit
    assert all(type(b) is DINOv2Block for b in ours.blocks)
    plain = VisionTransformer(
        img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, init_values=0.5,
        num_classes=0, dynamic_img_size=True,
    )  # fmt: skip
    assert ours.state_dict().keys() == plain.state_dict().keys()


def test_per_sample_mode_is_timm_drop_path_and_modes_are_validated() -> None:
    plain = _backbone("per_sample")
    assert all(b.drop_path1.drop_prob == RATE for b in plain.vit.blocks)
    subset = _backbone()
    assert all(isinstance(b.drop_path1, torch.nn.Identity) for b in subset.vit.blocks)
    subset.set_drop_path(0.0)  # the teacher's copy: no drop-path whatever the mode
    torch.manual_seed(0)
    x = torch.randn(B, 3, 16, 16)
    torch.testing.assert_close(subset.forward_features(x)["cls"], subset.eval()(x))
    with pytest.raises(ValueError, match="drop_path_mode must be"):
        _backbone("bernoulli")
