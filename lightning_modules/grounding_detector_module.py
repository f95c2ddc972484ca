"""Open-set grounding detector training and evaluation (spec §2 "LitModule", §9-§11).

Thin system: encode text (frozen, cached) → ``GroundingDetector`` → ``SetCriterion``. Every
random draw of a training step (DN noise, dropout, drop-path) is a pure function of
(seed, global_step, rank), so mid-epoch resume is bit-exact. The frozen text encoder's weights
are rebuilt from its config and never written to checkpoints.

Staged training: ``init_checkpoint`` starts a run from another run's detector weights (fresh
optimizer and step), and ``trainable`` / ``frozen`` freeze detector modules by path (e.g. the
backbone in a second stage): no gradients, and eval mode (no drop-path, frozen BatchNorm
statistics) even while the rest trains.
"""

import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from torch import nn
from torchmetrics.detection import MeanAveragePrecision
from torchvision.ops import box_convert

from lightning_modules.components.detection.closed_set_names import ClosedSetNames
from lightning_modules.components.detection.detector import DNRequest, GroundingDetector
from lightning_modules.components.detection.outputs import DetectorOutput, TextMemory
from lightning_modules.components.detection.postprocess import ChunkPrediction, postprocess_image
from lightning_modules.components.detection.text_encoder import TextEncoder
from lightning_modules.components.freezing import freeze, frozen_paths
from lightning_modules.components.losses.set_criterion import SetCriterion
from lightning_modules.dinov2_checkpoint import read_state_dict, sub_state

if TYPE_CHECKING:  # the batch type only; systems do not import datamodules at runtime
    from datamodules.components.detection_collate import PromptBatch

log = logging.getLogger(__name__)

OptimizerFactory = Callable[..., torch.optim.Optimizer]
TEXT_PREFIX = "text_encoder."
_STRIDE = 1_000_003


class StepDropSchedule:
    """lr factor at a step: linear warm-up, then × ``factor`` at every step in ``drops``."""

    def __init__(self, drops: Sequence[int] = (), factor: float = 0.1, warmup_steps: int = 0):
        self.drops, self.factor, self.warmup_steps = (
            sorted(int(d) for d in drops),
            factor,
            warmup_steps,
        )

    def __call__(self, step: int) -> float:
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        return warm * self.factor ** sum(step >= d for d in self.drops)


class GroundingDetectorLitModule(L.LightningModule):
    """Trains ``detector`` on token-level grounding targets; evaluates COCO box AP.

    Args:
        detector: the ``GroundingDetector``.
        text_encoder: a ``TextEncoder`` (frozen by default: excluded from checkpoints).
        criterion: the ``SetCriterion`` (owns the matcher and the loss weights).
        optimizer: partial AdamW (lr 1e-4, weight decay 1e-4).
        backbone_lr_mult: backbone lr factor (0.1). text_lr_mult: for an unfrozen text encoder.
        lr_drops: global steps where the lr is multiplied by ``lr_drop_factor``.
        warmup_steps: linear warm-up length in steps. grad_clip: max grad norm (0.1).
        num_select, nms_iou: post-processing (top 300, NMS off).
        seed: seeds the per-step randomness. val_prefixes / test_prefixes: metric names of the
            evaluation loaders in order (``val/mAP``, ``val_unseen/mAP``, ...).
        closed_set: a ``ClosedSetNames`` control (learned name vectors replace the text
            features of the names' tokens), or None (the open-set detector).
        trainable: module paths that train (e.g. ``["detector.universal_prompt"]``); every other
            detector module is frozen. None: all train. frozen: module paths frozen in any case
            (e.g. ``["detector.backbone"]``).
        init_checkpoint: a checkpoint whose detector weights start the run (fresh optimizer and
            step). Only the modules of ``OPTIONAL_INIT_MODULES`` may be missing there.
    """

    #: Detector state-key prefixes an ``init_checkpoint`` may lack (a subclass's extra heads).
    OPTIONAL_INIT_MODULES: tuple[str, ...] = ()

    def __init__(
        self, detector: GroundingDetector, text_encoder: TextEncoder, criterion: SetCriterion,
        optimizer: OptimizerFactory, backbone_lr_mult: float = 0.1, text_lr_mult: float = 0.1,
        lr_drops: Sequence[int] = (), lr_drop_factor: float = 0.1, warmup_steps: int = 0,
        grad_clip: float = 0.1, num_select: int = 300, nms_iou: float | None = None, seed: int = 0,
        val_prefixes: Sequence[str] = ("val", "val_unseen"),
        test_prefixes: Sequence[str] = ("test", "test_unseen"),
        closed_set: ClosedSetNames | None = None, trainable: Sequence[str] | None = None,
        frozen: Sequence[str] = (), init_checkpoint: str | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        # plain lists: checkpoints hold hyper-parameters and must load with weights_only=True
        lr_drops, val_prefixes = [int(d) for d in lr_drops], [str(p) for p in val_prefixes]
        test_prefixes, frozen = [str(p) for p in test_prefixes], [str(p) for p in frozen]
        trainable = None if trainable is None else [str(p) for p in trainable]
        self.save_hyperparameters(
            logger=False,
            ignore=["detector", "text_encoder", "criterion", "optimizer", "closed_set"],
        )
        if text_encoder.hidden_size != detector.text_dim:
            raise ValueError(
                f"text encoder width {text_encoder.hidden_size} != detector text_dim "
                f"{detector.text_dim}: set model.detector.text_dim={text_encoder.hidden_size}"
            )
        self.detector, self.text_encoder, self.criterion = detector, text_encoder, criterion
        self.closed_set = closed_set
        self.optimizer_factory = optimizer
        self.metrics = nn.ModuleDict({p: _map_metric() for p in [*val_prefixes, *test_prefixes]})
        if text_encoder.frozen:
            self.register_state_dict_post_hook(_drop_text_encoder)
            self.register_load_state_dict_post_hook(_ignore_missing_text_encoder)
        self.frozen_modules = frozen_paths(self, "detector", trainable, frozen)
        freeze(self, self.frozen_modules)
        self.train(self.training)  # frozen modules start in eval mode (Lightning keeps modes)

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hparams.init_checkpoint:
            self.init_from_checkpoint(self.hparams.init_checkpoint)

    def init_from_checkpoint(self, path: str) -> None:
        """Detector weights from ``path``; only ``OPTIONAL_INIT_MODULES`` may be missing there
        (a resume via ckpt_path is restored after this and wins)."""
        saved = sub_state(read_state_dict(path), "detector.")
        incompatible = self.detector.load_state_dict(saved, strict=False)
        optional = self.OPTIONAL_INIT_MODULES  # str.startswith(()) is False: nothing optional
        missing = [k for k in incompatible.missing_keys if not k.startswith(optional)]
        if missing or incompatible.unexpected_keys:
            raise ValueError(
                f"{path} does not fit this detector: missing {missing[:5]}, "
                f"unexpected {incompatible.unexpected_keys[:5]}"
            )
        new = new_modules(incompatible.missing_keys)
        if new:
            log.warning("initialised the detector from %s; not in it, so freshly initialised: %s",
                        path, ", ".join(f"{m} ({n} tensors)" for m, n in new.items()))  # fmt: skip
        else:
            log.info("initialised the detector from %s (every module found)", path)

    def train(self, mode: bool = True) -> "GroundingDetectorLitModule":
        """Frozen modules stay in eval mode (no drop-path or dropout) while the rest trains."""
        super().train(mode)
        for path in getattr(self, "frozen_modules", []):
            self.get_submodule(path).eval()
        return self

    # ---- forward ----------------------------------------------------------------------------
    def encode_prompt(self, prompt: "PromptBatch") -> TextMemory:
        """Tokenised captions → ``TextMemory`` (override for universal / visual prompts)."""
        feats = self.text_encoder(prompt.input_ids, prompt.attention_mask)
        text = feats.feats
        if self.closed_set is not None:
            pmap = prompt.positive_map.to(text.device)
            text = self.closed_set(text, pmap, prompt.names)
        return self.detector.text_memory(
            text, feats.text_token_mask, feats.position_ids, feats.submask
        )

    def forward(self, images: torch.Tensor, pad_mask: torch.Tensor, prompt: "PromptBatch",
                dn: DNRequest | None = None) -> DetectorOutput:  # fmt: skip
        """images (B, 3, H, W), pad_mask (B, H, W), one caption per image → ``DetectorOutput``."""
        feats = self.detector.image_features(images, pad_mask)
        return self.detector.forward_features(feats, self.encode_prompt(prompt), dn)

    @torch.no_grad()
    def predict_batch(self, images: torch.Tensor, pad_mask: torch.Tensor,
                      prompts: list["PromptBatch"],
                      orig_sizes: Sequence[tuple[int, int]],
                      num_select: int | None = None) -> list[dict[str, torch.Tensor]]:  # fmt: skip
        """Chunked inference: the backbone runs once; each prompt pass runs the transformer on
        its images; all (query, category) candidates of an image compete in one top-K.

        Returns per image {"boxes" (K, 4) xyxy pixels of ``orig_sizes[b]``, "scores" (K,),
        "labels" (K,) = ``prompt.label_ids`` values}; K ≤ ``num_select`` (default: hparams).
        """
        feats = self.detector.image_features(images, pad_mask)
        parts: list[list[ChunkPrediction]] = [[] for _ in range(len(images))]
        for prompt in prompts:
            index = prompt.image_index.to(images.device)
            out = self.detector.forward_features(feats.select(index), self.encode_prompt(prompt))
            for k, b in enumerate(prompt.image_index.tolist()):
                c = len(prompt.label_ids[k])
                parts[b].append(ChunkPrediction(
                    out.logits[k], out.boxes[k], out.text_token_mask[k],
                    prompt.positive_map[k, :c], prompt.label_ids[k],
                ))  # fmt: skip
        k = num_select or self.hparams.num_select
        return [postprocess_image(p, tuple(orig_sizes[b]), k, self.hparams.nms_iou)
                for b, p in enumerate(parts)]  # fmt: skip

    # ---- training ---------------------------------------------------------------------------
    def _step_seed(self, stream: int) -> int:
        key = (self.hparams.seed * _STRIDE + self.global_step) * _STRIDE + self.global_rank
        return (key * _STRIDE + stream) % (2**62)

    @contextlib.contextmanager
    def _step_rng(self) -> Iterator[None]:
        """Global RNG (dropout, drop-path) seeded by (seed, step, rank) inside, restored after."""
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda, device_type=self.device.type):
            torch.manual_seed(self._step_seed(1))
            yield

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        prompt, targets = batch["prompts"][0], batch["targets"]
        dn = DNRequest(
            [t["boxes"] for t in targets], [t["cat_index"] for t in targets],
            [len(x) for x in prompt.label_ids],
            torch.Generator().manual_seed(self._step_seed(0)), prompt.positive_map,
        )  # fmt: skip
        with self._step_rng():
            out = self(batch["images"], batch["pad_mask"], prompt, dn)
        losses = self.criterion(out, targets, prompt.positive_map)
        b = len(targets)
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=b)
        self.log_dict({f"train/{k}": v for k, v in losses.items() if k != "loss"}, batch_size=b)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=b)
        return losses["loss"]

    # ---- evaluation -------------------------------------------------------------------------
    def _prefix(self, prefixes: Sequence[str], index: int) -> str:
        return prefixes[index] if index < len(prefixes) else f"{prefixes[0]}_{index}"

    def _evaluate(self, batch: dict[str, Any], prefix: str) -> None:
        sizes = [m["orig_size"] for m in batch["meta"]]
        preds = self.predict_batch(batch["images"], batch["pad_mask"], batch["prompts"], sizes)
        gts = []
        for t, (h, w) in zip(batch["targets"], sizes, strict=True):
            xyxy = box_convert(t["boxes"].float(), "cxcywh", "xyxy")
            gts.append({"boxes": xyxy * xyxy.new_tensor([w, h, w, h]), "labels": t["category_id"]})
        if prefix not in self.metrics:
            self.metrics[prefix] = _map_metric().to(self.device)
        self.metrics[prefix].update(preds, gts)

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0):
        self._evaluate(batch, self._prefix(self.hparams.val_prefixes, dataloader_idx))

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, self._prefix(self.hparams.test_prefixes, dataloader_idx))

    def _log_metrics(self) -> None:
        for prefix, metric in self.metrics.items():
            if not metric.update_called:
                continue
            result = metric.compute()
            self.log(f"{prefix}/mAP", result["map"].float())
            self.log(f"{prefix}/mAP_50", result["map_50"].float())
            metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_metrics()

    def on_test_epoch_end(self) -> None:
        self._log_metrics()

    # ---- optimisation -----------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW groups: backbone (lr × backbone_lr_mult), the rest, an unfrozen text encoder."""
        hp = self.hparams
        backbone, rest = [], []
        for name, p in self.detector.named_parameters():
            if p.requires_grad:
                (backbone if name.startswith("backbone.") else rest).append(p)
        if self.closed_set is not None:
            rest += list(self.closed_set.parameters())
        groups = [
            {"params": rest, "lr_mult": 1.0},
            {"params": backbone, "lr_mult": hp.backbone_lr_mult},
        ]
        text = [p for p in self.text_encoder.parameters() if p.requires_grad]
        if text and not self.text_encoder.frozen:
            groups.append({"params": text, "lr_mult": hp.text_lr_mult})
        optimizer = self.optimizer_factory(params=[g for g in groups if g["params"]])
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * group["lr_mult"]
        schedule = StepDropSchedule(hp.lr_drops, hp.lr_drop_factor, hp.warmup_steps)
        # Wrapped in a plain function: LambdaLR checkpoints a callable object's __dict__ and
        # restores it on resume, which kept the first launch's lr_drops after a resume with
        # new ones (issue 6, RESULTS). The schedule is a pure function of the config and step.
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule(step))
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer,
                                    gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:  # fmt: skip
        """Clips the global grad norm at ``grad_clip`` (0.1; the trainer's value wins if set).

        Lightning's AMP plugin refuses to clip whenever the optimizer is fused, a guard that only
        fp16's grad scaler needs (a fused AdamW unscales internally). Without a scaler the norm is
        clipped here, over the same parameters as Lightning's norm clipping, so bf16-mixed trains
        with the fused AdamW.
        """
        clip = gradient_clip_val if gradient_clip_val is not None else self.hparams.grad_clip
        if not clip:
            return
        if str(self.trainer.precision) == "16-mixed":
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")
            return
        params = list(self.trainer.precision_plugin.main_params(optimizer))
        torch.nn.utils.clip_grad_norm_(params, clip)


def _map_metric() -> MeanAveragePrecision:
    """COCO box AP (pycocotools); up to ``num_select`` detections per image are expected."""
    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")
    metric.warn_on_many_detections = False
    return metric


def _drop_text_encoder(
    module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any
) -> None:
    """State-dict post-hook: the frozen text encoder is rebuilt from config, not checkpointed."""
    for key in [k for k in state_dict if k.startswith(prefix + TEXT_PREFIX)]:
        del state_dict[key]


def _ignore_missing_text_encoder(module: nn.Module, incompatible_keys: Any) -> None:
    """Load post-hook: the text encoder's weights are not expected in a checkpoint."""
    missing = incompatible_keys.missing_keys
    missing[:] = [k for k in missing if not k.startswith(TEXT_PREFIX)]


def new_modules(missing_keys: Sequence[str]) -> dict[str, int]:
    """Detector state keys absent from an init checkpoint → {module path: tensor count}, the
    module path being the key's first two components (e.g. ``mask_head.pixel``)."""
    return dict(Counter(".".join(k.split(".")[:2]) for k in missing_keys))
