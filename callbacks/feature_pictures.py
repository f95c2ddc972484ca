"""Periodic pictures of the backbone's features: patch-PCA as RGB and CLS attention per head."""

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor, nn
from torch.nn.functional import interpolate
from torchvision.utils import make_grid, save_image

from callbacks.knn_eval import PeriodicProbeCallback
from datamodules.components.multicrop_transforms import IMAGENET_MEAN, IMAGENET_STD
from lightning_modules.components.feature_pictures import cls_attention_maps, pca_rgb


def _denormalise(images: Tensor) -> Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images.cpu() * std + mean).clamp(0, 1)


def _upsample(maps: Tensor, size: int) -> Tensor:
    return interpolate(maps, size=(size, size), mode="nearest")


def _unit_range(maps: Tensor) -> Tensor:
    """Min-max scale each (h, w) map of (B, K, h, w) to [0, 1]."""
    flat = maps.flatten(2)
    low, high = flat.min(dim=2, keepdim=True).values, flat.max(dim=2, keepdim=True).values
    return ((flat - low) / (high - low).clamp_min(1e-12)).view_as(maps)


class FeaturePicturesCallback(PeriodicProbeCallback):
    """Saves two PNG grids per evaluation, one row per image of a fixed ``test`` subset:

    - ``pca_step{step:06d}.png``: input | patch-PCA RGB (foreground-thresholded, as in the paper);
    - ``attention_step{step:06d}.png``: input | last-block CLS attention, one tile per head.

    Files go to ``output_dir`` (None: ``<trainer.default_root_dir>/feature_pictures``, i.e. the
    run directory) and, when a ``WandbLogger`` is present, are logged as ``wandb.Image`` under
    ``pictures/pca`` and ``pictures/attention``.

    Extra args (the rest as in ``PeriodicProbeCallback``):
        num_images: images shown (the first of the seeded test subset).
        foreground_threshold: PCA foreground threshold in std units of the first component
            (None: no thresholding).
        output_dir: where the PNGs go.
        display_size: tiles are upsampled (nearest) to at least this many pixels.
    """

    def __init__(
        self,
        *args: Any,
        num_images: int = 8,
        foreground_threshold: float | None = 0.0,
        output_dir: str | None = None,
        display_size: int = 96,
        **kwargs: Any,
    ) -> None:
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        kwargs.update(train_size=0, val_size=0, test_size=num_images)
        super().__init__(*args, **kwargs)
        self.foreground_threshold = foreground_threshold
        self.output_dir = output_dir
        self.display_size = display_size

    def pictures(self, backbone: nn.Module) -> dict[str, Tensor]:
        """``{"pca", "attention"}`` image grids (3, H, W) in [0, 1]."""
        images = next(self.splits(backbone)["test"].batches(self.batch_size))
        device = next(backbone.parameters()).device
        with torch.no_grad():
            x = images.to(device)
            patch = backbone.forward_features(x)["patch"]
            attention = cls_attention_maps(backbone, x).cpu()
        p = backbone.patch_size
        grid = (images.shape[-2] // p, images.shape[-1] // p)
        rgb, _ = pca_rgb(patch, grid, self.foreground_threshold)
        size = max(images.shape[-1], self.display_size)
        shown = _upsample(_denormalise(images), size)
        pca_tiles = torch.stack([shown, _upsample(rgb, size)], dim=1)  # (B, 2, 3, S, S)
        heads = _upsample(_unit_range(attention), size)  # (B, heads, S, S)
        attn_tiles = torch.cat(
            [shown.unsqueeze(1), heads.unsqueeze(2).expand(-1, -1, 3, -1, -1)], 1
        )
        return {
            "pca": make_grid(pca_tiles.flatten(0, 1), nrow=2, padding=1, pad_value=1.0),
            "attention": make_grid(
                attn_tiles.flatten(0, 1), nrow=attn_tiles.shape[1], padding=1, pad_value=1.0
            ),
        }

    def evaluate(self, backbone: nn.Module) -> dict[str, Any]:
        return {f"pictures/{k}": v for k, v in self.pictures(backbone).items()}

    def publish(self, trainer: L.Trainer, pl_module: L.LightningModule, metrics: dict) -> None:
        out = Path(self.output_dir or Path(trainer.default_root_dir) / "feature_pictures")
        out.mkdir(parents=True, exist_ok=True)
        step = trainer.global_step
        paths = {}
        for key, grid in metrics.items():
            paths[key] = out / f"{key.split('/')[-1]}_step{step:06d}.png"
            save_image(grid, paths[key])
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                import wandb

                images = {k: wandb.Image(str(p)) for k, p in paths.items()}
                logger.experiment.log({**images, "trainer/global_step": step})
