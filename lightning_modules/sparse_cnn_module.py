"""A channel-pruned CNN classifier that rebuilds its slim architecture from its hyperparameters."""

from collections.abc import Sequence
from typing import Any

from lightning_modules.classifier_module import ClassifierLitModule, OptimizerFactory
from lightning_modules.components.sparse.channel_surgery import build_pruned


class SparseCNNLitModule(ClassifierLitModule):
    """``ClassifierLitModule`` whose network is built from ``arch`` and per-layer ``widths``.

    The widths (and, for the record, the kept channel indices relative to the original network
    and the measured sparsity) are hyperparameters, so ``SparseCNNLitModule.load_from_checkpoint``
    and ``ckpt_path`` resume build the slim network before loading weights — no original network
    and no pickled module needed (entropic-sparsification spec R3).

    Args:
        arch: ``LeNet5`` | ``LeNet5Caffe`` | ``VGG16BN`` | ``ResNet18``.
        widths: constructor widths (LeNet ``widths``, VGG ``plan`` with "M", ResNet
            ``internal_widths``), as returned by ``channel_surgery.widths_of``.
        kept_indices: {producer layer: kept channel indices in the original network}.
        sparsity: measured {"params": %, "channels": %, "flops": %} against the dense network.
        optimizer / warmup_steps / final_lr_factor: the fine-tuning recipe (None: evaluation only).
    """

    def __init__(
        self,
        arch: str,
        widths: Sequence[int | str],
        in_channels: int = 1,
        num_classes: int = 10,
        optimizer: OptimizerFactory | None = None,
        warmup_steps: float = 0,
        final_lr_factor: float = 0.0,
        kept_indices: dict[str, list[int]] | None = None,
        sparsity: dict[str, float] | None = None,
    ) -> None:
        net = build_pruned(arch, list(widths), in_channels=in_channels, num_classes=num_classes)
        super().__init__(net, optimizer, warmup_steps, final_lr_factor, num_classes)
        self.save_hyperparameters(logger=False, ignore=["optimizer"])

    def configure_optimizers(self) -> dict[str, Any]:
        if self.optimizer_factory is None:
            raise ValueError(
                "SparseCNNLitModule was built without an optimizer: pass one to fine-tune"
            )
        return super().configure_optimizers()
