"""Staged training of the text detector: ``init_checkpoint`` (strict for a plain grounding
detector) and ``frozen`` modules (no gradients, eval mode while the rest trains)."""

from functools import partial
from pathlib import Path

import pytest
import torch

from lightning_modules.components.detection.matcher import HungarianMatcher
from lightning_modules.components.losses.set_criterion import SetCriterion
from lightning_modules.grounding_detector_module import GroundingDetectorLitModule


@pytest.fixture
def build(make_detector, tiny_text_encoder):
    """``build(seed, **module_kwargs)`` → a micro text detector module."""

    def _build(seed: int = 0, **kwargs) -> GroundingDetectorLitModule:
        return GroundingDetectorLitModule(
            make_detector(seed=seed), tiny_text_encoder, SetCriterion(HungarianMatcher()),
            partial(torch.optim.AdamW, lr=1e-4), **kwargs,
        )  # fmt: skip

    return _build


def test_init_checkpoint_loads_the_detector_and_starts_fresh(build, tmp_path: Path) -> None:
    source = build(seed=0)
    path = tmp_path / "stage1.ckpt"
    torch.save({"state_dict": source.state_dict(), "global_step": 7}, path)
    target = build(seed=1, init_checkpoint=str(path))
    assert not torch.equal(target.detector.feat_map.weight, source.detector.feat_map.weight)
    target.setup("fit")
    for key, value in source.detector.state_dict().items():
        assert torch.equal(target.detector.state_dict()[key], value), key
    assert target.global_step == 0  # a fresh run, not a resume


def test_init_checkpoint_missing_a_module_names_it(build, tmp_path: Path) -> None:
    state = build(seed=0).state_dict()
    del state["detector.feat_map.weight"]
    path = tmp_path / "partial.ckpt"
    torch.save({"state_dict": state}, path)
    with pytest.raises(ValueError, match=r"does not fit this detector: missing \['feat_map"):
        build(seed=1, init_checkpoint=str(path)).setup("fit")


def test_frozen_backbone_gets_no_gradient_stays_in_eval_mode_and_leaves_the_optimizer(
    build,
) -> None:
    module = build(frozen=["detector.backbone"])
    module.train()
    assert not module.detector.backbone.training and module.detector.encoder.training
    assert not any(p.requires_grad for p in module.detector.backbone.parameters())
    assert all(p.requires_grad for p in module.detector.encoder.parameters())
    optimized = {id(p) for g in module.configure_optimizers()["optimizer"].param_groups
                 for p in g["params"]}  # fmt: skip
    assert not optimized & {id(p) for p in module.detector.backbone.parameters()}
    assert {id(p) for p in module.detector.encoder.parameters()} <= optimized
