"""DINOv2 self-supervised pretraining: DINO + iBOT + KoLeo with an EMA teacher (spec §4-§6).

The system wires existing components (``components/vit.py``, ``heads.py``, ``losses/``,
``param_groups.py``, ``schedules.py``); the teacher EMA itself runs in
``callbacks.ema.EMATeacherCallback`` after every optimizer step.
"""

import copy
import logging
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from omegaconf import Container, OmegaConf
from torch import nn

from experiments.errors import UserFacingError
from lightning_modules.components.losses import (
    DINOLoss,
    KoLeoLoss,
    build_teacher_targets,
    iBOTPatchLoss,
)
from lightning_modules.components.losses.distributed import all_reduce_sum, world_size
from lightning_modules.components.param_groups import build_param_groups
from lightning_modules.components.vit import DINOv2Backbone
from lightning_modules.dinov2_checkpoint import (
    DINOv2CheckpointError,
    load_matching,
    read_state_dict,
    require_head_complete,
    sub_state,
)
from lightning_modules.dinov2_heads import build_head, num_prototypes
from lightning_modules.dinov2_schedules import (
    DINOv2Schedules,
    OptimConfig,
    TeacherConfig,
    config_from,
)

log = logging.getLogger(__name__)
LOSS_TERMS = ("dino_local", "dino_global", "ibot", "koleo", "loss")
_SEED_STRIDE = 1_000_003


class NonFiniteLossError(UserFacingError, RuntimeError):
    """The loss or the gradient norm is NaN/inf: training stops before the broken state is stored.

    A user error (the message names the settings to change): the command-line entry points print
    it as ``error: ...`` and exit with 2.
    """


class DINOv2LitModule(L.LightningModule):
    """Student and EMA teacher as twin ``nn.ModuleDict``s ``{backbone, dino_head[, ibot_head]}``.

    Per step (spec §5.4): the teacher (always ``eval()``, no drop-path) embeds the two unmasked
    global crops; the student embeds the masked global crops and, separately, the local crops;
    ``loss = w_dino·(dino_local + dino_global) + w_ibot·ibot + w_koleo·ΣKoLeo``.

    Args:
        backbone: the student backbone; the teacher is a deep copy with drop-path 0.
        dino_head: ``{out_dim (K), hidden_dim, bottleneck_dim, nlayers}``.
        ibot: ``{weight, separate_head, head}``; ``head`` sizes the iBOT head when separate,
            otherwise the DINO head is shared.
        koleo: ``{weight (0.1), crops: both | first}``.
        teacher: :class:`TeacherConfig` fields (``target_mode``, temperatures).
        optim: :class:`OptimConfig` fields (lr, wd, warmup, freeze, layer decay).
        batch_size: images per process and step; with the world size and gradient
            accumulation it gives the global batch for lr scaling.
        student_temp: τ_s (0.1).
        dino_loss_weight: weight of the DINO terms (1.0).
        grad_clip: ``{max_norm: 3.0, mode: per_module | global | none}`` (D5).
        init_checkpoint: a D6 checkpoint whose student, teacher and centers initialise the run
            (continued pretraining, e.g. the high-resolution phase; positional embeddings are
            resampled to the new grid); optimizer and step start fresh.
        require_init_checkpoint: fail at fit start when ``init_checkpoint`` is not set.
        seed: base of the per-step seed that makes drop-path a function of the step.
        compile: ``torch.compile`` every student and teacher block when the model is
            configured (off by default: compiling takes about 2 minutes on this CPU; losses then
            differ from eager by float rounding).
        fused_optimizer: AdamW with ``fused=True`` (one kernel over all parameters instead of a
            Python loop; rounding differs from the default).
        skip_unused_tokens: run the backbones' last block only for the tokens the losses read
            (CLS, and the masked patches of the global crops) via
            ``DINOv2Backbone.forward_selected``; the same losses up to float rounding.
        merge_head_calls: one call per head on all its rows (global CLS, local CLS and masked
            patches through a shared head) instead of one call per crop set: fewer, taller
            matmuls, the same logits up to float rounding.
    """

    def __init__(
        self,
        backbone: DINOv2Backbone,
        dino_head: Mapping[str, Any],
        ibot: Mapping[str, Any],
        koleo: Mapping[str, Any],
        teacher: Mapping[str, Any],
        optim: Mapping[str, Any],
        batch_size: int,
        student_temp: float = 0.1,
        dino_loss_weight: float = 1.0,
        grad_clip: Mapping[str, Any] | None = None,
        init_checkpoint: str | None = None,
        require_init_checkpoint: bool = False,
        seed: int = 0,
        compile: bool = False,
        fused_optimizer: bool = False,
        skip_unused_tokens: bool = False,
        merge_head_calls: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False, ignore=["backbone", "teacher_backbone"])
        # plain containers, so checkpoints load with torch.load(weights_only=True)
        for key, value in self.hparams.items():
            if isinstance(value, Container):
                self.hparams[key] = OmegaConf.to_container(value, resolve=True)
        self.optim_cfg = config_from(OptimConfig, optim)
        self.teacher_cfg = config_from(TeacherConfig, teacher)
        self.ibot_cfg = {"weight": 1.0, "separate_head": False, "head": None, **dict(ibot)}
        self.koleo_cfg = {"weight": 0.1, "crops": "both", **dict(koleo)}
        self.clip_cfg = {"max_norm": 3.0, "mode": "per_module", **dict(grad_clip or {})}
        self._validate_settings()
        self.student = self._build_student(backbone, dino_head)
        self.teacher = self._build_teacher()
        t = self.teacher_cfg
        k_dino, k_ibot = (num_prototypes(h) for h in self._heads(self.student))
        self.dino_targets = build_teacher_targets(
            t.target_mode, k_dino, t.center_momentum, t.sk_iterations
        )
        self.ibot_targets = build_teacher_targets(
            t.target_mode, k_ibot, t.center_momentum, t.sk_iterations
        )
        self.dino_loss = DINOLoss(student_temp)
        self.ibot_loss = iBOTPatchLoss(student_temp)
        self.koleo_loss = KoLeoLoss()
        self.schedules: DINOv2Schedules | None = None  # built from the trainer's step count

    # ------------------------------------------------------------------ construction
    def _validate_settings(self) -> None:
        if self.koleo_cfg["crops"] not in ("both", "first"):
            raise ValueError(
                f"koleo.crops must be 'both' or 'first', got {self.koleo_cfg['crops']!r}"
            )
        if self.clip_cfg["mode"] not in ("per_module", "global", "none"):
            raise ValueError(
                f"grad_clip.mode must be per_module, global or none, got {self.clip_cfg['mode']!r}"
            )
        if self.ibot_cfg["separate_head"] and not self.ibot_cfg["head"]:
            raise ValueError("ibot.separate_head=true needs ibot.head sizes")
        if self.hparams.batch_size < 2 and self.koleo_cfg["weight"] > 0:
            raise ValueError(
                f"KoLeo needs at least 2 images per process, got batch_size={self.hparams.batch_size}"
            )

    def _build_student(self, backbone: DINOv2Backbone, dino_head: Mapping) -> nn.ModuleDict:
        modules: dict[str, nn.Module] = {
            "backbone": backbone,
            "dino_head": build_head(backbone.embed_dim, dino_head),
        }
        if self.ibot_cfg["separate_head"]:
            modules["ibot_head"] = build_head(backbone.embed_dim, self.ibot_cfg["head"])
        return nn.ModuleDict(modules)

    def _build_teacher(self) -> nn.ModuleDict:
        """Deep copy of the student: frozen, no drop-path, updated only by the EMA callback."""
        teacher = copy.deepcopy(self.student)
        teacher.backbone.set_drop_path(0.0)
        teacher.requires_grad_(False)
        return teacher.eval()

    def _heads(self, model: nn.ModuleDict) -> tuple[nn.Module, nn.Module]:
        """(DINO head, iBOT head) of a student/teacher dict; the iBOT head may be the DINO head."""
        return model["dino_head"], model["ibot_head"] if "ibot_head" in model else model[
            "dino_head"
        ]

    def train(self, mode: bool = True) -> "DINOv2LitModule":
        """The teacher stays in eval mode whatever the trainer asks."""
        super().train(mode)
        self.teacher.eval()
        return self

    # ------------------------------------------------------------------ public API
    @property
    def eval_backbone(self) -> DINOv2Backbone:
        """The backbone evaluated by kNN / linear probes: the teacher's (spec §9)."""
        return self.teacher.backbone

    @property
    def student_backbone(self) -> DINOv2Backbone:
        return self.student.backbone

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(EMA target, source) pairs the EMA callback updates after every optimizer step."""
        return [(self.teacher, self.student)]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) → CLS features (B, D) of the evaluation backbone."""
        return self.eval_backbone(images)

    # ------------------------------------------------------------------ losses
    def _masks(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """Student masks of the global crops (2B, N) bool."""
        return batch["masks"]

    def _ibot_tokens(
        self, batch: Mapping[str, torch.Tensor], n_crops: int, n_patches: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat indices into the (2B·N) patch tokens the iBOT loss uses, and their weights w_j."""
        return batch["mask_indices"], batch["mask_weights"]

    def _features(
        self,
        model: nn.ModuleDict,
        x: torch.Tensor,
        masks: torch.Tensor | None = None,
        patch_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Final-norm CLS (B, D) and patch tokens at ``patch_index`` (n, D) of a backbone.

        The patch tokens are None without ``patch_index``.
        """
        backbone = model["backbone"]
        if self.hparams.skip_unused_tokens:
            out = backbone.forward_selected(x, masks, patch_index)
            return out["cls"], None if patch_index is None else out["patch"]
        out = backbone.forward_features(x, masks=masks)
        patch = None if patch_index is None else out["patch"].flatten(0, 1)[patch_index]
        return out["cls"], patch

    @staticmethod
    def _merged_head_calls(
        pairs: list[tuple[nn.Module, torch.Tensor | None]],
    ) -> list[torch.Tensor | None]:
        """Logits of each ``(head, features (n_i, D))`` pair, one call per distinct head."""
        out: list[torch.Tensor | None] = [None] * len(pairs)
        for head in {id(h): h for h, _ in pairs}.values():
            used = [i for i, (h, x) in enumerate(pairs) if h is head and x is not None]
            logits = head(torch.cat([pairs[i][1] for i in used]))
            for i, part in zip(used, logits.split([len(pairs[i][1]) for i in used]), strict=True):
                out[i] = part
        return out

    @torch.no_grad()
    def _teacher_targets(
        self, global_crops: torch.Tensor, token_idx: torch.Tensor, teacher_temp: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher CLS targets (2B, K) and patch targets (n_m, K); then the centers update."""
        cls, patch = self._features(self.teacher, global_crops, patch_index=token_idx)
        dino_head, ibot_head = self._heads(self.teacher)
        if self.hparams.merge_head_calls:
            cls_logits, patch_logits = self._merged_head_calls(
                [(dino_head, cls), (ibot_head, patch)]
            )
        else:
            cls_logits, patch_logits = dino_head(cls), ibot_head(patch)
        p_cls = self.dino_targets(cls_logits, teacher_temp)
        p_patch = self.ibot_targets(patch_logits, teacher_temp)
        self.dino_targets.update(cls_logits)
        self.ibot_targets.update(patch_logits)
        return p_cls, p_patch

    def compute_losses(
        self, batch: Mapping[str, torch.Tensor], teacher_temp: float
    ) -> dict[str, torch.Tensor]:
        """All loss terms of one step (and the center updates).

        Args:
            batch: ``MultiCropCollate`` output: ``global_crops`` (2B, 3, G, G), ``local_crops``
                (n_local·B, 3, L, L), ``masks`` (2B, N), ``mask_indices`` (n_m,),
                ``mask_weights`` (n_m,).
            teacher_temp: τ_t of this step.

        Returns:
            scalars ``dino_local``, ``dino_global``, ``ibot``, ``koleo`` (unweighted) and ``loss``.
        """
        g = batch["global_crops"]
        n_crops = g.shape[0]
        n_patches = (g.shape[-1] // self.student.backbone.patch_size) ** 2
        idx, weights = self._ibot_tokens(batch, n_crops, n_patches)
        p_cls, p_patch = self._teacher_targets(g, idx, teacher_temp)

        dino_head, ibot_head = self._heads(self.student)
        s_cls, s_patch = self._features(self.student, g, self._masks(batch), idx)
        local = batch.get("local_crops")
        l_cls = None
        if local is not None and local.numel():
            l_cls = self._features(self.student, local)[0]
        if self.hparams.merge_head_calls:
            s_global, s_local, s_patch = self._merged_head_calls(
                [(dino_head, s_cls), (dino_head, l_cls), (ibot_head, s_patch)]
            )
            dino = self.dino_loss(s_global, s_local, p_cls)
            ibot = self.ibot_loss(s_patch, p_patch, weights, n_crops)
        else:  # the plain order of calls, which fixes the order gradients are summed in
            s_local = None if l_cls is None else dino_head(l_cls)
            dino = self.dino_loss(dino_head(s_cls), s_local, p_cls)
            ibot = self.ibot_loss(ibot_head(s_patch), p_patch, weights, n_crops)
        crops = s_cls.chunk(2)
        koleo = sum(
            self.koleo_loss(c) for c in crops[: 1 if self.koleo_cfg["crops"] == "first" else 2]
        )
        total = (
            self.hparams.dino_loss_weight * (dino["local"] + dino["global"])
            + self.ibot_cfg["weight"] * ibot
            + self.koleo_cfg["weight"] * koleo
        )
        return {
            "dino_local": dino["local"],
            "dino_global": dino["global"],
            "ibot": ibot,
            "koleo": koleo,
            "loss": total,
        }

    # ------------------------------------------------------------------ training loop
    def configure_model(self) -> None:
        """Compile the block stacks (``compile=true``) in each process, after any DDP spawn."""
        if self.hparams.compile:
            self.compile_backbones()

    def compile_backbones(self) -> None:
        """Compile every student and teacher backbone's blocks in place (state dicts unchanged)."""
        for model in (self.student, self.teacher):
            model["backbone"].compile_blocks()

    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        path = self.hparams.init_checkpoint
        if path:
            self.init_from_checkpoint(path)
        elif self.hparams.require_init_checkpoint:
            raise DINOv2CheckpointError(
                "this configuration continues pretraining: pass model.init_checkpoint=PATH "
                "(a DINOv2 checkpoint holding student and teacher with heads)"
            )

    def init_from_checkpoint(self, path: str) -> None:
        """Student, teacher and centers from a D6 checkpoint; optimizer and step start fresh."""
        state = read_state_dict(path)
        require_head_complete(state, path)
        load_matching(self.student, sub_state(state, "student."), f"student of {path}")
        load_matching(self.teacher, sub_state(state, "teacher."), f"teacher of {path}")
        for name in ("dino_targets", "ibot_targets"):
            saved, module = sub_state(state, f"{name}."), getattr(self, name)
            if saved and module.state_dict():
                load_matching(module, saved, f"{name} of {path}")
        log.info("initialised student, teacher and centers from %s", path)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resuming (``ckpt_path=``) needs a head-complete checkpoint (D6)."""
        require_head_complete(checkpoint.get("state_dict", {}), "the resumed checkpoint")

    def build_optimizer(self) -> torch.optim.AdamW:
        """AdamW over the student's parameter groups; lr and wd are set by the schedules (D4)."""
        cfg = self.optim_cfg
        groups = build_param_groups(
            self.student,
            num_blocks=self.student.backbone.num_blocks,
            layer_decay=cfg.layer_decay,
            patch_embed_lr_multiplier=cfg.patch_embed_lr_multiplier,
        )
        # lr and wd are placeholders: the schedules overwrite them before every step.
        fused = {"fused": True} if self.hparams.fused_optimizer else {}
        return torch.optim.AdamW(groups, lr=0.0, betas=cfg.betas, weight_decay=0.0, **fused)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        optimizer = self.build_optimizer()
        total = int(self.trainer.estimated_stepping_batches)
        global_batch = (
            self.hparams.batch_size * self.trainer.world_size * self.trainer.accumulate_grad_batches
        )
        self.schedules = DINOv2Schedules.build(
            self.optim_cfg, self.teacher_cfg, total, global_batch
        )
        return optimizer

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        step = self.global_step
        values = self.schedules.apply(self.optimizers().optimizer, step)
        # Drop-path draws from the global RNG, which checkpoints do not restore; seeding it per
        # step (and rank) makes it a function of the step, so resume stays exact.
        torch.manual_seed((self.hparams.seed * _SEED_STRIDE + step) * 64 + self.global_rank)
        losses = self.compute_losses(batch, values["teacher_temp"])
        self._check_and_log(losses, values, step)
        return losses["loss"]

    def _check_and_log(self, losses: dict[str, torch.Tensor], values: dict, step: int) -> None:
        """Mean of every term over processes, logged; any non-finite term stops every process."""
        terms = torch.stack([losses[k].detach().float() for k in LOSS_TERMS])
        terms = all_reduce_sum(terms) / world_size()
        if not bool(torch.isfinite(terms).all()):
            detail = ", ".join(
                f"{k}={v:.4g}" for k, v in zip(LOSS_TERMS, terms.tolist(), strict=True)
            )
            raise NonFiniteLossError(
                f"non-finite DINOv2 loss at step {step} ({detail}); stopping before backward. "
                "The last checkpoint written is the last good state. Lower the lr, raise the "
                "warmup, check the data, or use fp32/bf16 instead of fp16."
            )
        for name, value in zip(LOSS_TERMS, terms, strict=True):
            self.log(f"train/{'loss' if name == 'loss' else 'loss_' + name}", value,
                     on_step=True, on_epoch=False, prog_bar=name == "loss")  # fmt: skip
        for name, value in values.items():
            self.log(f"train/{name}", value, on_step=True, on_epoch=False)

    def _clip_groups(self) -> dict[str, list[nn.Parameter]]:
        if self.clip_cfg["mode"] == "global":
            return {"student": [p for p in self.student.parameters() if p.grad is not None]}
        return {
            name: [p for p in module.parameters() if p.grad is not None]
            for name, module in self.student.items()
        }

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip the backbone, DINO head and iBOT head separately at 3.0 (D5), after unscaling.

        A non-finite gradient norm stops the run before the optimizer step (except with fp16,
        whose grad scaler skips such steps by design).
        """
        if self.clip_cfg["mode"] == "none":
            return
        norms = {
            name: torch.nn.utils.clip_grad_norm_(params, self.clip_cfg["max_norm"])
            for name, params in self._clip_groups().items()
            if params
        }
        if str(self.trainer.precision) == "16-mixed" or not norms:
            return
        if not bool(torch.isfinite(torch.stack(list(norms.values()))).all()):
            bad = [n for n, v in norms.items() if not torch.isfinite(v)]
            raise NonFiniteLossError(
                f"non-finite gradient norm in {bad} at step {self.global_step}; stopping before "
                "the optimizer step. The last checkpoint written is the last good state."
            )
