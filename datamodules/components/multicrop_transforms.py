"""DINOv2 multi-crop augmentation and the evaluation transform (spec §3.2, §9; decision D2a).

Pipelines run on uint8 tensors (torchvision ``transforms.v2``), so colour jitter, blur and the
solarize threshold of 128 act on the same 0..255 scale as the reference's PIL pipeline;
conversion to float and ImageNet normalisation come last.
"""

from typing import Any, Literal

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

BlurMode = Literal["intended", "reference_code"]
#: Blur probability of (global crop 1, global crop 2, each local crop). The reference passes
#: ``1 − p`` to its random-apply, inverting the first two (PR #411); released checkpoints
#: were trained with ``reference_code``.
BLUR_PROBABILITIES: dict[str, tuple[float, float, float]] = {
    "intended": (1.0, 0.1, 0.5),
    "reference_code": (0.0, 0.9, 0.5),
}


def to_rgb_uint8(image: Image.Image | torch.Tensor) -> torch.Tensor:
    """PIL image or uint8 tensor (H, W) / (1|3, H, W) → uint8 (3, H, W); grayscale → 3 channels."""
    if isinstance(image, Image.Image):
        return v2.functional.pil_to_tensor(image.convert("RGB"))
    if image.dtype != torch.uint8:
        raise TypeError(f"tensor images must be uint8 (C, H, W), got {image.dtype}")
    if image.dim() == 2:
        image = image.unsqueeze(0)
    if image.shape[0] == 1:
        return image.expand(3, -1, -1).contiguous()
    if image.shape[0] != 3:
        raise ValueError(f"expected 1 or 3 channels, got image of shape {tuple(image.shape)}")
    return image


def _crop_pipeline(
    size: int,
    scale: tuple[float, float],
    blur_p: float,
    solarize_p: float,
    color_jitter_p: float = 0.8,
    grayscale_p: float = 0.2,
) -> v2.Compose:
    """RandomResizedCrop + flip → colour jitter → grayscale → blur → solarize."""
    steps: list[Any] = [
        v2.RandomResizedCrop(size, scale=scale, interpolation=InterpolationMode.BICUBIC),
        v2.RandomHorizontalFlip(p=0.5),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=color_jitter_p),
        v2.RandomGrayscale(p=grayscale_p),
        v2.RandomApply([v2.GaussianBlur(kernel_size=9, sigma=(0.1, 2.0))], p=blur_p),
    ]
    if solarize_p > 0:
        steps.append(v2.RandomSolarize(threshold=128, p=solarize_p))
    return v2.Compose(steps)


def _normalise(mean: tuple[float, ...], std: tuple[float, ...]) -> v2.Compose:
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


class MultiCropTransform:
    """One image → 2 global and ``n_local`` local normalised crops.

    Global crops: ``RandomResizedCrop(global_size, global_scale, bicubic)`` + flip; local crops
    likewise at ``local_size`` / ``local_scale``. All crops get colour jitter (p 0.8), grayscale
    (p 0.2) and Gaussian blur (kernel 9, σ ~ U(0.1, 2)) with per-crop probabilities from
    ``blur_mode``; global crop 2 is also solarized (threshold 128, p 0.2).

    Args:
        global_size, local_size: crop sizes in px (224 / 98 for patch 14); with ``patch_size``
            they are checked to be multiples of it.
        global_scale, local_scale: area ranges of RandomResizedCrop.
        n_local: number of local crops (8; 0 allowed).
        blur_mode: ``intended`` (1.0, 0.1, 0.5), the default, or ``reference_code`` (0.0, 0.9, 0.5).
        color_jitter_p, grayscale_p: probabilities of colour jitter (0.8) and grayscale (0.2).
            Tiny grayscale presets set both to 0: on near-binary digits, brightness/contrast
            jitter dominates a fresh ViT's CLS features and leaves the two views of an image
            nearly uncorrelated, which keeps the DINO loss at ln K (see
            ``configs/experiment/dinov2_tiny_digits.yaml``).
        mean, std: normalisation statistics (ImageNet).
        patch_size: optional ViT patch size to validate the crop sizes against.

    Returns from ``__call__``: ``{"global_crops": [2 × (3, G, G)], "local_crops": [n_local ×
    (3, L, L)]}`` float32.
    """

    def __init__(
        self,
        global_size: int = 224,
        local_size: int = 98,
        global_scale: tuple[float, float] = (0.32, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.32),
        n_local: int = 8,
        blur_mode: BlurMode = "intended",
        color_jitter_p: float = 0.8,
        grayscale_p: float = 0.2,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        patch_size: int | None = None,
    ) -> None:
        if blur_mode not in BLUR_PROBABILITIES:
            raise ValueError(
                f"blur_mode must be one of {sorted(BLUR_PROBABILITIES)}, got {blur_mode!r}"
            )
        if patch_size is not None:
            for name, size in (("global_size", global_size), ("local_size", local_size)):
                if size % patch_size:
                    raise ValueError(
                        f"{name} {size} is not a multiple of the patch size {patch_size}"
                    )
        blur1, blur2, blur_local = BLUR_PROBABILITIES[blur_mode]
        gs, ls = tuple(global_scale), tuple(local_scale)
        self.n_local = n_local
        self.blur_mode = blur_mode
        colour = {"color_jitter_p": color_jitter_p, "grayscale_p": grayscale_p}
        self.global_transforms = [
            _crop_pipeline(global_size, gs, blur1, solarize_p=0.0, **colour),
            _crop_pipeline(global_size, gs, blur2, solarize_p=0.2, **colour),
        ]
        self.local_transform = _crop_pipeline(local_size, ls, blur_local, 0.0, **colour)
        self.normalise = _normalise(mean, std)

    def _crops(self, image: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        return {
            "global_crops": [self.normalise(t(image)) for t in self.global_transforms],
            "local_crops": [
                self.normalise(self.local_transform(image)) for _ in range(self.n_local)
            ],
        }

    def __call__(
        self, image: Image.Image | torch.Tensor, generator: torch.Generator | None = None
    ) -> dict[str, list[torch.Tensor]]:
        """Image (PIL or uint8 (C, H, W)) → crops.

        ``transforms.v2`` draws from the global torch RNG (seeded per DataLoader worker). Pass
        ``generator`` to make the crops a function of it instead, e.g. for exact resume: the
        global RNG is then forked, seeded from ``generator`` and restored.
        """
        image = to_rgb_uint8(image)
        if generator is None:
            return self._crops(image)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self._crops(image)


def build_eval_transform(
    crop_size: int = 224,
    resize_ratio: float = 256 / 224,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> v2.Compose:
    """``Resize(round(crop·256/224), bicubic) → CenterCrop(crop) → normalise`` (spec §9).

    Accepts PIL images or uint8 tensors (grayscale is converted to 3 channels); returns
    float32 (3, crop, crop). Tiny configs keep the 256/224 ratio relative to their crop size.
    """
    return v2.Compose(
        [
            v2.Lambda(to_rgb_uint8),
            v2.Resize(round(crop_size * resize_ratio), interpolation=InterpolationMode.BICUBIC),
            v2.CenterCrop(crop_size),
            _normalise(mean, std),
        ]
    )
