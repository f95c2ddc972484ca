"""Gradual structured pruning during (fine-)training, resumable mid-schedule.

Target sparsity follows the cubic schedule of Zhu & Gupta (2017, "To prune, or not to prune"),
a pure function of the global step. Channels are removed by **masks held as buffers** on each
consumer layer (``<consumer>.channel_mask``), applied to the consumer's input by a forward
pre-hook: masking the consumer (not zeroing the producer's filter) is what removes a channel
when BatchNorm follows the producer (entropic-sparsification spec §6 test 4). Buffers live in
the ``state_dict``, so checkpoints keep the masks and a resumed run continues mid-schedule
exactly; Lightning's ``ModelPruning`` strips them by default (spec §10).
"""

import math
from typing import Any

import lightning as L
import torch
from torch import nn

from callbacks.channel_selectors import (
    MASK_NAME,
    EntropicChannelSelector,
    Selector,
    select_l1_norm,
    select_random,
)
from lightning_modules.components.sparse.prunable_pairs import PrunablePair, prunable_pairs
from lightning_modules.components.sparse.prune_config import PruneConfig

SELECTORS: dict[str, Selector] = {"l1_norm": select_l1_norm, "random": select_random}


def cubic_sparsity(step: int, final: float, start: int, end: int, initial: float = 0.0) -> float:
    """Zhu & Gupta: s(t) = s_f + (s_i − s_f)(1 − (t − t0)/(t1 − t0))³, clamped to [t0, t1]."""
    if step <= start:
        return initial if step == start else 0.0
    progress = min(1.0, (step - start) / max(1, end - start))
    return final + (initial - final) * (1.0 - progress) ** 3


def apply_channel_mask(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor]:
    """Forward pre-hook: zero the consumer's input channels whose mask is 0 (a flatten→linear
    input is masked per group of H·W features)."""
    (x,) = args
    mask = module.get_buffer(MASK_NAME).to(x.dtype)
    if x.dim() == 4:
        return (x * mask.view(1, -1, 1, 1),)
    return (x * mask.repeat_interleave(x.shape[1] // mask.numel()).view(1, -1),)


class PruningScheduleCallback(L.Callback):
    """Prunes every ``frequency`` steps from ``start_step`` to ``end_step`` towards ``final_sparsity``.

    Args:
        final_sparsity: fraction of each prunable channel set removed at the end, in [0, 1).
        start_step / end_step / frequency: when pruning events happen (global steps).
        selector: ``l1_norm`` | ``random`` | ``entropic`` or a callable ``Selector``.
        prune: ``PruneConfig`` fields for the entropic selector (solver flags).
        calibration_images: training images (seeded subset) the entropic selector regresses on;
            taken from ``trainer.datamodule.data_train.images`` at setup.
        min_channels: never keep fewer channels in a layer.
        net_attr: attribute of the LightningModule holding the network.
    """

    def __init__(
        self,
        final_sparsity: float,
        start_step: int = 0,
        end_step: int = 1000,
        frequency: int = 100,
        selector: str | Selector = "l1_norm",
        min_channels: int = 1,
        net_attr: str = "net",
        prune: dict[str, Any] | None = None,
        calibration_images: int = 256,
    ) -> None:
        if not 0.0 <= final_sparsity < 1.0:
            raise ValueError(f"final_sparsity must lie in [0, 1), got {final_sparsity}")
        if not 0 <= start_step <= end_step or frequency < 1:
            raise ValueError("need 0 <= start_step <= end_step and frequency >= 1")
        self.final_sparsity = final_sparsity
        self.start_step, self.end_step, self.frequency = start_step, end_step, frequency
        if isinstance(selector, str) and selector not in (*SELECTORS, "entropic"):
            raise ValueError(f"unknown selector {selector!r}; use {[*SELECTORS, 'entropic']}")
        self.selector = SELECTORS.get(selector, selector) if isinstance(selector, str) else selector
        self.prune = PruneConfig(**(prune or {}))
        self.calibration_images = calibration_images
        self.min_channels = min_channels
        self.net_attr = net_attr
        self.pairs: list[PrunablePair] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Register all-ones masks and hooks before a checkpoint is restored into them."""
        net = getattr(pl_module, self.net_attr)
        self.pairs = prunable_pairs(net)
        if self.selector == "entropic":
            self.selector = EntropicChannelSelector(self._calibration(trainer), self.prune)
        for pair in self.pairs:
            consumer = net.get_submodule(pair.consumer)
            if MASK_NAME in dict(consumer.named_buffers(recurse=False)):
                continue
            n = net.get_submodule(pair.producer).weight.shape[0]
            consumer.register_buffer(MASK_NAME, torch.ones(n, device=consumer.weight.device))
            consumer.register_forward_pre_hook(apply_channel_mask)

    def _calibration(self, trainer: L.Trainer) -> torch.Tensor:
        images = getattr(getattr(trainer.datamodule, "data_train", None), "images", None)
        if images is None:
            raise ValueError(
                "selector=entropic needs calibration images: the datamodule must hold its "
                "preprocessed training images as `data_train.images` (ClassificationDataModule does)"
            )
        n = min(self.calibration_images, len(images))
        gen = torch.Generator().manual_seed(0)
        return images[torch.randperm(len(images), generator=gen)[:n]]

    def target_sparsity(self, step: int) -> float:
        return cubic_sparsity(step, self.final_sparsity, self.start_step, self.end_step)

    def is_pruning_step(self, step: int) -> bool:
        return (
            self.start_step <= step <= self.end_step
            and (step - self.start_step) % self.frequency == 0
        )

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if not self.is_pruning_step(step):
            return
        net = getattr(pl_module, self.net_attr)
        sparsity = self.target_sparsity(step)
        for pair in self.pairs:
            mask = net.get_submodule(pair.consumer).get_buffer(MASK_NAME)
            n_keep = max(self.min_channels, math.ceil((1.0 - sparsity) * mask.numel()))
            if n_keep >= int(mask.sum().item()):
                continue
            keep = self.selector(net, pair, n_keep, step)
            new_mask = torch.zeros_like(mask)
            new_mask[keep] = 1.0
            mask.mul_(new_mask)  # monotone: a removed channel never returns
        pl_module.log("prune/target_sparsity", sparsity)

    def state_dict(self) -> dict[str, Any]:
        # Masks are buffers (in the model's state_dict); the schedule is a function of the step.
        return {"final_sparsity": self.final_sparsity, "start_step": self.start_step,
                "end_step": self.end_step, "frequency": self.frequency}  # fmt: skip

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        mine = self.state_dict()
        if state_dict != mine:
            raise ValueError(
                f"checkpoint was written with pruning schedule {state_dict}, "
                f"but this run configures {mine}; resuming would change the schedule mid-way"
            )


def channel_masks(net: nn.Module) -> dict[str, torch.Tensor]:
    """{consumer name: mask} of a network prepared by ``PruningScheduleCallback``."""
    return {
        name: module.get_buffer(MASK_NAME)
        for name, module in net.named_modules()
        if MASK_NAME in dict(module.named_buffers(recurse=False))
    }
