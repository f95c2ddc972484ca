"""Periodic kNN evaluation of a self-supervised backbone during training (spec §9, decision D9).

This file also holds ``PeriodicProbeCallback``, the base of the three probe callbacks
(``KNNEvalCallback``, ``LinearProbeCallback``, ``FeaturePicturesCallback``): when to run
(every N epochs and/or every N optimizer steps), rank 0 only, and evaluation that leaves no
trace in training (global RNG states, train/eval flags and gradients untouched). The backbone
is read from ``pl_module.eval_backbone`` (the teacher, or the student's spare EMA in
distillation), so the callbacks work with any LightningModule exposing that attribute.
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from datamodules.components.image_tensors import TORCHVISION_DATASETS
from datamodules.components.labelled_features import LabelledImages, build_labelled_splits
from lightning_modules.components.knn import KNN_KS, KNN_TEMPERATURE, extract_cls_features, knn_top1

BACKBONE_ATTR = "eval_backbone"
LABELLED_DATASETS = (*TORCHVISION_DATASETS, "digits")


@contextmanager
def isolated_evaluation(module: nn.Module) -> Iterator[None]:
    """Run evaluation inside: every submodule in eval mode; afterwards each submodule's
    ``training`` flag and the global CPU (and current CUDA device's) RNG state are restored."""
    modes = [(m, m.training) for m in module.modules()]
    param = next(module.parameters(), None)
    on_cuda = param is not None and param.device.type == "cuda"
    cuda = [param.device.index or 0] if on_cuda else []
    try:
        with torch.random.fork_rng(devices=cuda):
            module.eval()
            yield
    finally:
        for m, training in modes:
            m.training = training


def backbone_image_size(backbone: nn.Module, default: int = 224) -> int:
    """The size the backbone's positional embedding was built for (the global crop size)."""
    patch_embed = getattr(getattr(backbone, "vit", backbone), "patch_embed", None)
    size = getattr(patch_embed, "img_size", None)
    return int(size[0]) if size else default


class PeriodicProbeCallback(L.Callback):
    """Runs ``evaluate(backbone)`` every ``every_n_epochs`` epochs and/or ``every_n_steps`` steps
    (and at the end of training), on rank 0.

    Subclasses implement ``evaluate`` (returning ``{metric name: float}``) and may override
    ``publish``. Metrics go straight to every logger at the current global step (not through
    ``pl_module.log``, whose step-level logs only reach loggers every ``log_every_n_steps``)
    and into ``trainer.callback_metrics`` (for ``ModelCheckpoint(monitor=...)`` and the
    entry point's summary). The only state is the global step of the last evaluation (so
    gradient accumulation and coinciding triggers evaluate once), kept in ``state_dict``.

    Args:
        dataset: labelled dataset (``mnist``, ``fashion_mnist``, ``cifar10``, ``digits``).
        data_dir: its root directory.
        image_size: eval crop size; None: the backbone's ``img_size`` (global crop size).
        train_size / val_size / test_size: subset sizes (None: the whole split; a float
            ``val_size`` below 1 is a fraction of the train split).
        every_n_epochs: run at the end of every N-th epoch (None/0: never).
        every_n_steps: run after every N-th optimizer step (None/0: never).
        at_train_start: also run when training starts (the network before any update, or the
            resumed one), e.g. to print the kNN accuracy before and after a short run.
        at_train_end: also run when training ends, unless the last step was just evaluated.
        batch_size: images per backbone forward.
        seed: seeds the subsets and any randomness of the evaluation.
        backbone_attr: attribute of the LightningModule holding the backbone.
    """

    def __init__(
        self,
        dataset: str = "digits",
        data_dir: str = "data",
        image_size: int | None = None,
        train_size: int | None = 2000,
        val_size: int | float = 0,
        test_size: int | None = 1000,
        every_n_epochs: int | None = 1,
        every_n_steps: int | None = None,
        at_train_end: bool = True,
        batch_size: int = 256,
        seed: int = 0,
        backbone_attr: str = BACKBONE_ATTR,
        at_train_start: bool = False,
    ) -> None:
        self.dataset, self.data_dir, self.image_size = dataset, data_dir, image_size
        self.sizes = {"train_size": train_size, "val_size": val_size, "test_size": test_size}
        if dataset not in LABELLED_DATASETS:
            raise ValueError(
                f"probe dataset must be one of {sorted(LABELLED_DATASETS)}, got {dataset!r}"
            )
        self.every_n_epochs, self.every_n_steps = every_n_epochs, every_n_steps
        self.at_train_start, self.at_train_end = at_train_start, at_train_end
        self.batch_size, self.seed, self.backbone_attr = batch_size, seed, backbone_attr
        self._splits: dict[int, dict[str, LabelledImages]] = {}  # data cache, not state
        self._last_step = -1

    def splits(self, backbone: nn.Module) -> dict[str, LabelledImages]:
        """The labelled ``train`` / ``val`` / ``test`` sets, built once per image size."""
        size = self.image_size or backbone_image_size(backbone)
        if size not in self._splits:
            self._splits[size] = build_labelled_splits(
                self.dataset, self.data_dir, size, **self.sizes, seed=self.seed
            )
        return self._splits[size]

    def evaluate(self, backbone: nn.Module) -> dict[str, float]:
        raise NotImplementedError

    def publish(self, trainer: L.Trainer, pl_module: L.LightningModule, metrics: dict) -> None:
        """Send numeric metrics to every logger and ``trainer.callback_metrics``, and print them."""
        numeric = {name: float(value) for name, value in metrics.items()}
        shown = ", ".join(f"{k}={v:.4f}" for k, v in numeric.items())
        rank_zero_info(f"{type(self).__name__} at step {trainer.global_step}: {shown}")
        for logger in trainer.loggers:
            logger.log_metrics(numeric, step=trainer.global_step)
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in numeric.items()})

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Evaluate now (rank 0 only), leaving the module and the global RNG as they were."""
        if trainer.global_step == self._last_step:
            return
        self._last_step = trainer.global_step
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        backbone = getattr(pl_module, self.backbone_attr)
        with isolated_evaluation(pl_module), isolated_evaluation(backbone):
            metrics = self.evaluate(backbone)
        self.publish(trainer, pl_module, metrics)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_train_start:
            self.run(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0:
            self.run(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.run(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_train_end:
            self.run(trainer, pl_module)

    @property
    def state_key(self) -> str:
        """Distinct per configuration, so several probes of one class keep separate state."""
        return self._generate_state_key(
            dataset=self.dataset, every_n_epochs=self.every_n_epochs,
            every_n_steps=self.every_n_steps, backbone_attr=self.backbone_attr,
        )  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self._last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._last_step = int(state_dict.get("last_step", -1))


class KNNEvalCallback(PeriodicProbeCallback):
    """Weighted kNN top-1 of the backbone's L2-normalised CLS features.

    Bank: the ``train`` subset; queries: the ``test`` subset. Logs ``probe/knn_top1_k{k}`` for
    each k (headline k = 20). Extra args: ``ks`` (10, 20, 100, 200; clipped to the bank size),
    ``temperature`` (0.07), ``chunk_size`` (queries per similarity matmul); the rest as in
    ``PeriodicProbeCallback``.
    """

    def __init__(
        self,
        *args: Any,
        ks: Sequence[int] = KNN_KS,
        temperature: float = KNN_TEMPERATURE,
        chunk_size: int = 1024,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.ks, self.temperature, self.chunk_size = tuple(ks), temperature, chunk_size

    def evaluate(self, backbone: nn.Module) -> dict[str, float]:
        data = self.splits(backbone)
        train, test = data["train"], data["test"]
        train_feats = extract_cls_features(backbone, train.batches(self.batch_size))
        test_feats = extract_cls_features(backbone, test.batches(self.batch_size))
        accs = knn_top1(
            train_feats, train.labels, test_feats, test.labels,
            self.ks, self.temperature, chunk_size=self.chunk_size,
        )  # fmt: skip
        return {f"probe/knn_top1_k{k}": acc for k, acc in accs.items()}
