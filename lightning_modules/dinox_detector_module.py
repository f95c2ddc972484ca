"""DINO-X system: the grounding detector with universal / visual prompts, masks and keypoints
(spec §12, decision P9).

Training: the prompt source of a step is ``train_prompts[global_step % len]`` (text, universal,
visual), so mixed schedules stay pure functions of the step. The base module's ``trainable``
(prompt-tuning: only the universal prompt) or ``frozen`` (stage 2: the backbone) freeze detector
modules, and its ``init_checkpoint`` may lack the extension modules (stage 1 from a
Grounding-DINO run): they keep their initialisation, and the log names them.

Validation (per loader prefix, e.g. ``val``): text box AP as the base module (``val/mAP``), and,
when the heads run, mask AP (``val/mask_mAP``, torchmetrics ``iou_type="segm"``) and
class-agnostic OKS AP (``val/kpt_AP``); with ``eval_prompts`` containing ``universal``:
class-agnostic AP and AR@100 of prompt-free detection (``val/agnostic_mAP``, ``_mAP_50``,
``_mAR_100``); with ``visual``: box AP with visual prompts taken from the first
``visual_exemplar_images`` images of the loader, searched on the *other* images
(``val/visual_mAP``), next to text-prompt AP on the same images and categories
(``val/visual_text_mAP``).

Text–visual prompt alignment (T-Rex2; ``visual_text_alignment.py``): with ``align_weight`` > 0,
visual steps add ``align_weight`` × an InfoNCE loss (``train/loss_align``) pulling each visual
prompt vector towards its category's text embedding after the feature enhancer (the caption's
other names are the negatives; the text side is a detached target, computed without gradient).
"""

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import Container, OmegaConf
from torch import nn
from torchmetrics.detection import MeanAveragePrecision

from lightning_modules.components.detection.detector import DNRequest, GroundingDetector
from lightning_modules.components.detection.dinox_inference import (
    DINOXPostProcess,
    PassOutput,
    group_prompts,
    pixel_targets,
    restrict_parts,
    unique_instances,
)
from lightning_modules.components.detection.keypoint_ap import KeypointAP
from lightning_modules.components.detection.outputs import DetectorOutput, ImageFeatures
from lightning_modules.components.detection.text_encoder import TextEncoder
from lightning_modules.components.detection.visual_prompt import (
    average_by_category,
)
from lightning_modules.components.detection.visual_text_alignment import (
    VisualTextAlignmentLoss,
    alignment_anchors,
    category_embeddings,
)
from lightning_modules.components.losses.dinox_criterion import DINOXCriterion
from lightning_modules.components.losses.set_criterion import SetCriterion
from lightning_modules.grounding_detector_module import (
    GroundingDetectorLitModule,
    OptimizerFactory,
    _map_metric,
)

if TYPE_CHECKING:
    from datamodules.components.detection_collate import PromptBatch

PROMPT_SOURCES = ("text", "universal", "visual")
#: Detector modules a Grounding-DINO checkpoint may lack (``init_from_checkpoint``).
EXTENSION_MODULES = ("universal_prompt.", "visual_prompt.", "mask_head.", "keypoint_head.",
                     "backbone.up4.")  # fmt: skip


class DINOXDetectorLitModule(GroundingDetectorLitModule):
    """``GroundingDetectorLitModule`` + DINO-X prompts and heads.

    Args (beyond the base module's, passed through ``base``):
        train_prompts: prompt source per step, cycled by global step.
        eval_prompts: prompt sources evaluated besides text.
        visual_exemplar_images: images per validation loader that supply visual prompts.
        mask_select: detections per image given masks (mask AP, overlays).
        keypoint_select: instances per image scored by OKS AP; keypoint_sigmas: σ_k.
        align_weight: weight of the text–visual alignment loss on visual steps (0 = off).
        align_temperature, align_centre: ``VisualTextAlignmentLoss``'s τ and centring.
    """

    OPTIONAL_INIT_MODULES = EXTENSION_MODULES

    def __init__(
        self, detector: GroundingDetector, text_encoder: TextEncoder, criterion: SetCriterion,
        optimizer: OptimizerFactory, train_prompts: Sequence[str] = ("text",),
        eval_prompts: Sequence[str] = (), visual_exemplar_images: int = 8,
        mask_select: int = 100, keypoint_select: int = 20,
        keypoint_sigmas: Sequence[float] = (0.05,) * 5, align_weight: float = 0.0,
        align_temperature: float = 0.1, align_centre: bool = True, **base: Any,
    ) -> None:  # fmt: skip
        super().__init__(detector, text_encoder, criterion, optimizer, **base)
        # plain lists: checkpoints hold hyper-parameters and must load with weights_only=True
        train_prompts, eval_prompts = (
            [str(p) for p in train_prompts],
            [str(p) for p in eval_prompts],
        )
        keypoint_sigmas = [float(s) for s in keypoint_sigmas]
        base = {k: OmegaConf.to_container(v) if isinstance(v, Container) else v
                for k, v in base.items()}  # fmt: skip
        for source in [*train_prompts, *eval_prompts]:
            if source not in PROMPT_SOURCES:
                raise ValueError(f"unknown prompt source {source!r}; expected {PROMPT_SOURCES}")
        self.save_hyperparameters(
            logger=False, ignore=["detector", "text_encoder", "criterion", "optimizer"]
        )
        self.postprocess = DINOXPostProcess(mask_select, keypoint_select)
        self.extra_metrics = nn.ModuleDict()
        if align_weight < 0:
            raise ValueError(f"align_weight must be >= 0, got {align_weight}")
        if align_weight and detector.visual_prompt is None:
            raise ValueError("align_weight > 0 needs model.detector.visual_prompt")
        self.alignment = VisualTextAlignmentLoss(align_temperature, align_centre)

    # ---- training -----------------------------------------------------------------------------
    def _generator(self, stream: int) -> torch.Generator:
        return torch.Generator().manual_seed(self._step_seed(stream))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        source = self.hparams.train_prompts[self.global_step % len(self.hparams.train_prompts)]
        prompt, targets = batch["prompts"][0], batch["targets"]
        with self._step_rng():
            feats = self.detector.image_features(batch["images"], batch["pad_mask"])
            out, step_targets, pmap, visual = self._prompted_forward(source, feats, prompt, targets)
            align = None
            if self.hparams.align_weight and visual is not None:
                align = self._alignment_loss(feats, prompt, targets, *visual)
        kwargs = (
            {"generator": self._generator(2)} if isinstance(self.criterion, DINOXCriterion) else {}
        )
        losses = self.criterion(out, step_targets, pmap, **kwargs)
        if align is not None:
            losses["loss_align"] = align
            losses["loss"] = losses["loss"] + self.hparams.align_weight * align
        b = len(targets)
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=b)
        self.log_dict({f"train/{k}": v for k, v in losses.items() if k != "loss"}, batch_size=b)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=b)
        return losses["loss"]

    def _prompted_forward(self, source: str, feats: ImageFeatures, prompt: "PromptBatch",
                          targets: list[dict[str, Any]]) -> tuple[
                              DetectorOutput, list[dict[str, Any]], torch.Tensor,
                              tuple[torch.Tensor, torch.Tensor] | None]:  # fmt: skip
        """One training forward with the step's prompt source → (output, targets with
        ``cat_index`` into that prompt's categories, positive map (B, C, T), and on a visual step
        (category ids (C_v,), visual prompt vectors (C_v, d)), else None)."""
        b, visual = len(targets), None
        if source == "visual" and not any(len(t["boxes"]) for t in targets):
            source = "text"  # nothing to show as a prompt in this batch
        if source == "universal":  # every box is "object"
            text = self.detector.universal_memory(b)  # raises without a universal prompt
            targets = [{**t, "cat_index": torch.zeros_like(t["cat_index"])} for t in targets]
            pmap, n_cat = self.detector.universal_prompt.positive_map(b), [1] * b
        elif source == "visual":
            label_ids = [ids.to(self.device) for ids in prompt.label_ids]
            keys = [ids[t["cat_index"]] for ids, t in zip(label_ids, targets, strict=True)]
            prompts, group_ids = group_prompts([t["boxes"] for t in targets], keys,
                                               self._generator(3))  # fmt: skip
            memory = self.detector.universal_encoding(feats)  # shared by prompts and search
            ids, vectors = average_by_category(
                self.detector.encode_visual_prompts(feats, prompts, memory), group_ids
            )
            targets = [{**t, "cat_index": torch.searchsorted(ids, label_ids[i][t["cat_index"]])}
                       for i, t in enumerate(targets)]  # fmt: skip
            pmap = torch.eye(len(ids), device=self.device)[None].expand(b, -1, -1)
            n_cat = [len(ids)] * b
            visual = (ids, vectors)
        else:
            text = self.encode_prompt(prompt)
            pmap, n_cat = prompt.positive_map, [len(x) for x in prompt.label_ids]
        dn = DNRequest([t["boxes"] for t in targets], [t["cat_index"] for t in targets], n_cat,
                       self._generator(0), pmap)  # fmt: skip
        if source == "visual":
            out = self.detector.forward_visual(feats, vectors[None].expand(b, -1, -1), dn, memory)
        else:
            out = self.detector.forward_features(feats, text, dn)
        return out, targets, pmap, visual

    def _alignment_loss(self, feats: ImageFeatures, prompt: "PromptBatch",
                        targets: list[dict[str, Any]], ids: torch.Tensor,
                        vectors: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """Alignment of the step's visual vectors (C_v, d) for category ``ids`` (C_v,) with the
        text embeddings of the step's captions (encoder output, no gradient)."""
        with torch.no_grad():
            memory_text = self.detector.encoder(feats, self.encode_prompt(prompt))[1]
            text = category_embeddings(memory_text, prompt.positive_map.to(self.device))
        label_ids = [ids_b.to(self.device) for ids_b in prompt.label_ids]
        rows, images, target = alignment_anchors(ids, label_ids,
                                                 [t["cat_index"] for t in targets])  # fmt: skip
        n_cat = torch.tensor([len(x) for x in label_ids], device=self.device)
        valid = torch.arange(text.shape[1], device=self.device)[None] < n_cat[images, None]
        return self.alignment(vectors[rows], text[images], valid, target)

    # ---- inference ----------------------------------------------------------------------------
    @torch.no_grad()
    def detect(self, feats: ImageFeatures, prompts: "list[PromptBatch] | None",
               orig_sizes: Sequence[tuple[int, int]], image_sizes: Sequence[tuple[int, int]],
               visual: tuple[torch.Tensor, torch.Tensor] | None = None,
               num_select: int | None = None) -> list[dict[str, torch.Tensor]]:  # fmt: skip
        """Detections per image with masks/keypoints when the heads run.

        Prompt source: ``visual`` = (category ids (C,), prompt vectors (C, d)) if given; else the
        text ``prompts`` (chunked passes); else the universal prompt (prompt-free, label 0).
        """
        parts = self._passes(feats, prompts, visual)
        return self._select(parts, orig_sizes, image_sizes, num_select)

    def _passes(self, feats: ImageFeatures, prompts: "list[PromptBatch] | None",
                visual: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> list[list[PassOutput]]:  # fmt: skip
        """The forward passes of ``detect``, per image its share of every pass."""
        n = feats.src.shape[0]
        parts: list[list[PassOutput]] = [[] for _ in range(n)]
        if visual is not None:
            ids, vectors = visual
            out = self.detector.forward_visual(feats, vectors[None].expand(n, -1, -1))
            eye = torch.eye(len(ids), device=vectors.device)
            for b in range(n):
                parts[b].append(PassOutput(out, b, eye, ids))
        elif prompts is not None:
            for prompt in prompts:
                index = prompt.image_index.to(feats.src.device)
                out = self.detector.forward_features(
                    feats.select(index), self.encode_prompt(prompt)
                )
                for k, b in enumerate(prompt.image_index.tolist()):
                    c = len(prompt.label_ids[k])
                    parts[b].append(PassOutput(out, k, prompt.positive_map[k, :c],
                                               prompt.label_ids[k].to(feats.src.device)))  # fmt: skip
        else:
            out = self.detector.forward_features(feats, self.detector.universal_memory(n))
            pmap = self.detector.universal_prompt.positive_map(1)[0]
            zero = torch.zeros(1, dtype=torch.long, device=feats.src.device)
            for b in range(n):
                parts[b].append(PassOutput(out, b, pmap, zero))
        return parts

    def _select(self, parts: list[list[PassOutput]], orig_sizes: Sequence[tuple[int, int]],
                image_sizes: Sequence[tuple[int, int]],
                num_select: int | None = None) -> list[dict[str, torch.Tensor]]:  # fmt: skip
        """Per image the best ``num_select`` (query, category) detections of its passes."""
        k = num_select or self.hparams.num_select
        return [self.postprocess(p, tuple(orig_sizes[b]), tuple(image_sizes[b]), k,
                                 self.hparams.nms_iou) for b, p in enumerate(parts)]  # fmt: skip

    @torch.no_grad()
    def visual_prompt_bank(self, feats: ImageFeatures, boxes: list[torch.Tensor],
                           keys: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Example boxes[b] (K_b, 4) cxcywh with category keys[b] on the images of ``feats`` →
        (category ids (C,), prompt vectors (C, d) averaged over the example images)."""
        prompts, group_keys = group_prompts(boxes, keys)
        return average_by_category(self.detector.encode_visual_prompts(feats, prompts), group_keys)

    # ---- evaluation ---------------------------------------------------------------------------
    def _extra_metric(self, kind: str, prefix: str) -> nn.Module:
        key = f"{kind}__{prefix}"
        if key not in self.extra_metrics:
            if kind == "kpt":
                metric = KeypointAP(self.hparams.keypoint_sigmas, self.hparams.keypoint_select)
            elif kind == "mask":
                metric = MeanAveragePrecision(iou_type="segm", backend="pycocotools")
            else:
                metric = _map_metric()
            self.extra_metrics[key] = metric.to(self.device)
        return self.extra_metrics[key]

    def _evaluate(self, batch: dict[str, Any], prefix: str) -> None:
        sizes = [m["orig_size"] for m in batch["meta"]]
        image_sizes = [m["size"] for m in batch["meta"]]
        feats = self.detector.image_features(batch["images"], batch["pad_mask"])
        gts = pixel_targets(batch["targets"], batch["meta"])
        text_parts = self._passes(feats, batch["prompts"])
        preds = self._select(text_parts, sizes, image_sizes)
        if prefix not in self.metrics:
            self.metrics[prefix] = _map_metric().to(self.device)
        self.metrics[prefix].update(preds, gts)
        self._update_heads(preds, gts, prefix)
        if "universal" in self.hparams.eval_prompts:
            agnostic = self.detect(feats, None, sizes, image_sizes, num_select=100)
            self._extra_metric("agnostic", prefix).update(
                agnostic, [{**g, "labels": torch.zeros_like(g["labels"])} for g in gts]
            )
        bank = getattr(self, "banks", {}).get(prefix)
        if "visual" in self.hparams.eval_prompts and bank is not None:
            self._evaluate_visual(batch, feats, text_parts, gts, prefix, bank)

    def _update_heads(self, preds: list[dict[str, torch.Tensor]],
                      gts: list[dict[str, torch.Tensor]], prefix: str) -> None:  # fmt: skip
        """Mask AP on each image's best ``mask_select`` detections; class-agnostic OKS AP on
        its best ``keypoint_select`` distinct queries."""
        if all("masks" in p for p in preds) and all("masks" in g for g in gts):
            top = [{"masks": p["masks"], **{k: p[k][: len(p["masks"])]
                                            for k in ("scores", "labels")}} for p in preds]  # fmt: skip
            self._extra_metric("mask", prefix).update(top, gts)
        if all("keypoints" in p for p in preds) and all("keypoints" in g for g in gts):
            picked = []
            for p in preds:
                keep = unique_instances(p, self.hparams.keypoint_select)
                picked.append({"keypoints": p["keypoints"][keep], "scores": p["scores"][keep]})
            self._extra_metric("kpt", prefix).update(picked, gts)

    def _evaluate_visual(self, batch: dict[str, Any], feats: ImageFeatures,
                         text_parts: list[list[PassOutput]],
                         gts: list[dict[str, torch.Tensor]], prefix: str,
                         bank: tuple[torch.Tensor, torch.Tensor, set]) -> None:  # fmt: skip
        """Visual-prompt AP on the images that gave no exemplar, over the prompted categories;
        the text passes of the same images are scored alongside (``visual_text``), their top-K
        taken over the same categories (``restrict_parts``) so that both sides rank equally many
        candidates per category."""
        ids, vectors, used = bank
        keep = [b for b, m in enumerate(batch["meta"]) if m["image_id"] not in used]
        if not keep:
            return
        index = torch.tensor(keep, device=feats.src.device)
        preds = self.detect(feats.select(index), None,
                            [batch["meta"][b]["orig_size"] for b in keep],
                            [batch["meta"][b]["size"] for b in keep], visual=(ids, vectors))  # fmt: skip
        restricted, text = [], []
        for b in keep:
            on = torch.isin(gts[b]["labels"], ids)
            restricted.append({"boxes": gts[b]["boxes"][on], "labels": gts[b]["labels"][on]})
            parts = restrict_parts(text_parts[b], ids)  # none left: the image detects nothing
            meta = batch["meta"][b]
            det = (self._select([parts], [meta["orig_size"]], [meta["size"]])[0] if parts
                   else {"boxes": ids.new_zeros(0, 4).float(), "scores": ids.new_zeros(0).float(),
                         "labels": ids.new_zeros(0)})  # fmt: skip
            text.append({k: det[k] for k in ("boxes", "scores", "labels")})
        self._extra_metric("visual", prefix).update(
            [{k: p[k] for k in ("boxes", "scores", "labels")} for p in preds], restricted
        )
        self._extra_metric("visual_text", prefix).update(text, restricted)

    def _build_banks(self, loaders: Any, prefixes: Sequence[str]) -> dict[str, tuple]:
        """Per loader: visual prompts from the GT boxes of its first ``visual_exemplar_images``
        images → (category ids, averaged vectors, the image ids used)."""
        loaders = loaders if isinstance(loaders, list | tuple) else [loaders]
        banks = {}
        for i, loader in enumerate(loaders):
            vectors, keys, used = [], [], set()
            remaining = self.hparams.visual_exemplar_images
            for batch in loader:
                if remaining <= 0:
                    break
                batch = self.transfer_batch_to_device(batch, self.device, i)
                r = min(remaining, len(batch["targets"]))
                remaining -= r
                targets = batch["targets"][:r]
                used.update(m["image_id"] for m in batch["meta"][:r])
                prompts, group_keys = group_prompts([t["boxes"] for t in targets],
                                                    [t["category_id"] for t in targets])  # fmt: skip
                if not len(group_keys):
                    continue
                feats = self.detector.image_features(batch["images"][:r], batch["pad_mask"][:r])
                vectors.append(self.detector.encode_visual_prompts(feats, prompts))
                keys.append(group_keys)
            if vectors:
                ids, means = average_by_category(torch.cat(vectors), torch.cat(keys))
                banks[self._prefix(prefixes, i)] = (ids, means, used)
        return banks

    def on_validation_epoch_start(self) -> None:
        if "visual" in self.hparams.eval_prompts:
            with torch.no_grad():
                self.banks = self._build_banks(self.trainer.val_dataloaders,
                                               self.hparams.val_prefixes)  # fmt: skip

    def on_test_epoch_start(self) -> None:
        if "visual" in self.hparams.eval_prompts:
            with torch.no_grad():
                self.banks = self._build_banks(self.trainer.test_dataloaders,
                                               self.hparams.test_prefixes)  # fmt: skip

    def _log_metrics(self) -> None:
        super()._log_metrics()
        names = {"agnostic": "agnostic_mAP", "visual": "visual_mAP", "visual_text": "visual_text_mAP",
                 "mask": "mask_mAP", "kpt": "kpt_AP"}  # fmt: skip
        for key, metric in self.extra_metrics.items():
            if not metric.update_called:
                continue
            kind, prefix = key.split("__")
            result = metric.compute()
            self.log(f"{prefix}/{names[kind]}", result["map"].float())
            self.log(f"{prefix}/{names[kind]}_50", result["map_50"].float())
            if kind == "agnostic":
                self.log(f"{prefix}/agnostic_mAR_100", result["mar_100"].float())
            metric.reset()
