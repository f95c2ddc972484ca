"""MultiCropTransform: crop shapes, blur probabilities per mode (empirical), eval transform."""

import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from datamodules.components.multicrop_transforms import (
    BLUR_PROBABILITIES,
    MultiCropTransform,
    build_eval_transform,
)


def _blur_stage(pipeline: v2.Compose) -> tuple[v2.RandomApply, v2.GaussianBlur]:
    """The pipeline's RandomApply holding a GaussianBlur (v2 keeps transforms in lists)."""
    (stage,) = [
        step
        for step in pipeline.transforms
        if isinstance(step, v2.RandomApply) and isinstance(step.transforms[0], v2.GaussianBlur)
    ]
    return stage, stage.transforms[0]


def test_crop_shapes_and_grayscale_input() -> None:
    transform = MultiCropTransform(global_size=32, local_size=16, n_local=3, patch_size=4)
    gray = Image.fromarray((torch.rand(40, 48) * 255).byte().numpy(), mode="L")
    for image in (gray, torch.randint(0, 256, (1, 40, 48), dtype=torch.uint8)):
        crops = transform(image)
        assert [c.shape for c in crops["global_crops"]] == [(3, 32, 32)] * 2
        assert [c.shape for c in crops["local_crops"]] == [(3, 16, 16)] * 3
        assert crops["global_crops"][0].dtype == torch.float32


def test_crop_sizes_validated_against_patch() -> None:
    with pytest.raises(ValueError, match="local_size 15 is not a multiple of the patch size 4"):
        MultiCropTransform(global_size=32, local_size=15, patch_size=4)
    with pytest.raises(ValueError, match="blur_mode"):
        MultiCropTransform(blur_mode="paper")


def test_generator_makes_crops_reproducible() -> None:
    transform = MultiCropTransform(global_size=16, local_size=8, n_local=1)
    image = torch.randint(0, 256, (3, 24, 24), dtype=torch.uint8)
    a = transform(image, generator=torch.Generator().manual_seed(5))
    b = transform(image, generator=torch.Generator().manual_seed(5))
    assert all(torch.equal(x, y) for x, y in zip(a["global_crops"], b["global_crops"], strict=True))


@pytest.mark.parametrize("mode", ["intended", "reference_code"])
def test_blur_probabilities_empirical(mode: str) -> None:
    """Each crop's blur stage fires with the tabulated probability (global 1, global 2, local).

    The stage is run on its own: the rest of the pipeline draws independently of it, and the
    full pipeline is too slow for a few thousand draws on a shared CPU.
    """
    torch.manual_seed(0)
    transform = MultiCropTransform(global_size=16, local_size=8, n_local=1, blur_mode=mode)
    image = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    n = 1000
    observed = []
    for pipeline in [*transform.global_transforms, transform.local_transform]:
        stage, blur = _blur_stage(pipeline)
        assert tuple(blur.kernel_size) == (9, 9) and list(blur.sigma) == [0.1, 2.0]
        calls = []
        handle = blur.register_forward_hook(lambda *_, calls=calls: calls.append(1))
        for _ in range(n):
            stage(image)
        handle.remove()
        observed.append(len(calls) / n)
    for got, want in zip(observed, BLUR_PROBABILITIES[mode], strict=True):
        assert got == pytest.approx(want, abs=0.05), (mode, observed)


def test_solarize_only_on_second_global_crop() -> None:
    transform = MultiCropTransform(global_size=16, local_size=8, n_local=1)

    def solarize_p(pipeline: v2.Compose) -> list[float]:
        return [t.p for t in pipeline.transforms if isinstance(t, v2.RandomSolarize)]

    assert solarize_p(transform.global_transforms[0]) == []
    assert solarize_p(transform.global_transforms[1]) == [0.2]
    assert solarize_p(transform.local_transform) == []
    (solarize,) = [
        t for t in transform.global_transforms[1].transforms if isinstance(t, v2.RandomSolarize)
    ]
    assert solarize.threshold == 128


def test_eval_transform_keeps_256_224_ratio() -> None:
    image = torch.randint(0, 256, (1, 50, 70), dtype=torch.uint8)
    out = build_eval_transform(crop_size=32)(image)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    resize = build_eval_transform(crop_size=224).transforms[1]
    assert resize.size == [256]


@pytest.mark.parametrize(("jitter", "gray"), [(0.8, 0.2), (0.0, 0.0)])
def test_colour_probabilities_configurable(jitter: float, gray: float) -> None:
    """Colour jitter and grayscale default to the reference's 0.8 / 0.2; 0 disables them."""
    transform = MultiCropTransform(
        global_size=16, local_size=8, n_local=1, color_jitter_p=jitter, grayscale_p=gray
    )
    for pipeline in [*transform.global_transforms, transform.local_transform]:
        (jitter_stage,) = [
            t
            for t in pipeline.transforms
            if isinstance(t, v2.RandomApply) and isinstance(t.transforms[0], v2.ColorJitter)
        ]
        (gray_stage,) = [t for t in pipeline.transforms if isinstance(t, v2.RandomGrayscale)]
        assert (jitter_stage.p, gray_stage.p) == (jitter, gray)
