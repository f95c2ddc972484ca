"""A minimal LightningModule exposing ``eval_backbone``, standing in for a DINOv2 system.

Its import path (``dinov2_eval.tiny_dinov2.TinyDINOv2LitModule``) contains "dinov2", so
``experiments/evaluate.py`` treats its checkpoints as DINOv2 ones.
"""

import copy

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_modules.components.vit import DINOv2Backbone


class TinyDINOv2LitModule(L.LightningModule):
    """A student ViT trained on a toy loss that consumes the global RNG; a frozen teacher copy.

    ``eval_backbone`` is the teacher, kept in eval mode, updated as an EMA of the student.
    """

    def __init__(self, img_size: int = 16, embed_dim: int = 32, lr: float = 0.01) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.student = DINOv2Backbone(
            None, img_size=img_size, patch_size=4, embed_dim=embed_dim, depth=2, num_heads=2,
            drop_path=0.1, layerscale_init=None,
        )  # fmt: skip
        self.teacher = copy.deepcopy(self.student).requires_grad_(False).eval()

    @property
    def eval_backbone(self) -> DINOv2Backbone:
        return self.teacher

    def train(self, mode: bool = True) -> "TinyDINOv2LitModule":
        super().train(mode)
        self.teacher.eval()
        return self

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        x, _ = batch
        noisy = x + 0.1 * torch.randn_like(x)  # uses the global RNG, as augmentations would
        loss = (self.student(noisy) - self.teacher(x)).pow(2).mean() - self.student(x).std()
        self.log("train/loss", loss)
        return loss

    def on_train_batch_end(self, *args) -> None:
        with torch.no_grad():
            for t, s in zip(self.teacher.parameters(), self.student.parameters(), strict=True):
                t.lerp_(s, 0.1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.student.parameters(), lr=self.hparams.lr)


def random_loader(n: int = 16, size: int = 16, batch_size: int = 8) -> DataLoader:
    """Fixed random images (n, 3, size, size) with dummy labels, unshuffled."""
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(n, 3, size, size, generator=gen)
    return DataLoader(TensorDataset(images, torch.zeros(n, dtype=torch.long)), batch_size)
