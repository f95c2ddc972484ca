"""A micro DINO-X LitModule on a test detector, shared by the DINO-X head tests."""

import torch


def build_dinox_module(make_detector, text_encoder, module_kwargs: dict | None = None,
                       **detector_overrides):  # fmt: skip
    """A micro ``DINOXDetectorLitModule`` (eval mode) on ``make_detector(**detector_overrides)``
    with the DINO-X criterion (64 mask points)."""
    from functools import partial

    from lightning_modules.components.detection.matcher import HungarianMatcher
    from lightning_modules.components.losses.dinox_criterion import DINOXCriterion
    from lightning_modules.dinox_detector_module import DINOXDetectorLitModule

    criterion = DINOXCriterion(HungarianMatcher(), mask={"num_points": 64})
    return DINOXDetectorLitModule(
        make_detector(**detector_overrides), text_encoder, criterion,
        partial(torch.optim.AdamW, lr=1e-4), **(module_kwargs or {}),
    ).eval()  # fmt: skip
