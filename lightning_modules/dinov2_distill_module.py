"""DINOv2 distillation (spec §7, decision D7): a frozen pretrained teacher with its heads."""

import copy
import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from lightning_modules.components.vit import DINOv2Backbone
from lightning_modules.dinov2_checkpoint import (
    DINOv2CheckpointError,
    PrototypeMismatchError,
    load_matching,
    read_state_dict,
    require_head_complete,
    sub_state,
)
from lightning_modules.dinov2_heads import build_head, num_prototypes
from lightning_modules.dinov2_module import DINOv2LitModule

log = logging.getLogger(__name__)
PROTOTYPES = "last_layer.parametrizations.weight.original1"  # (K, bottleneck)


class DINOv2DistillLitModule(DINOv2LitModule):
    """The pretraining loop and losses, with the paper's distillation changes.

    1. The teacher is ``teacher_backbone`` with ``teacher_heads``, loaded from the D6 checkpoint
       ``teacher_checkpoint`` at fit start (its ``teacher.*`` weights and, with centering, its
       centers) and frozen: no teacher EMA.
    2. ``student_ema``, an EMA of the student updated by ``EMATeacherCallback``, is the final
       model and the evaluation backbone.
    3. No masking (the student's mask token is frozen and unused); drop-path comes from the
       student config (0 in the paper).
    4. iBOT on all patch tokens of both unmasked global crops, ``w_j = 1/N``: the mean over
       patches per crop, then over the 2B crops.

    The student heads' prototype counts must equal the teacher's (the CE is over the teacher's
    prototypes); a mismatch raises :class:`PrototypeMismatchError`. All other arguments are
    those of :class:`DINOv2LitModule`.

    Args:
        teacher_backbone: the teacher architecture (e.g. the pretraining run's backbone).
        teacher_heads: ``{dino: {out_dim, hidden_dim, bottleneck_dim, nlayers}, ibot: ... | null}``;
            ``ibot`` null means the teacher shares its DINO head.
        teacher_checkpoint: path of the D6 checkpoint; required to fit.
    """

    def __init__(
        self,
        backbone: DINOv2Backbone,
        teacher_backbone: DINOv2Backbone,
        teacher_heads: Mapping[str, Any],
        teacher_checkpoint: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone=backbone, **kwargs)
        self.teacher = self._build_frozen_teacher(teacher_backbone, teacher_heads)
        self._check_compatible()
        self.student.backbone.mask_token.requires_grad_(False)
        self.student_ema = copy.deepcopy(self.student).requires_grad_(False).eval()

    def _build_frozen_teacher(
        self, backbone: DINOv2Backbone, heads: Mapping[str, Any]
    ) -> nn.ModuleDict:
        modules: dict[str, nn.Module] = {
            "backbone": backbone,
            "dino_head": build_head(backbone.embed_dim, heads["dino"]),
        }
        if heads.get("ibot"):
            modules["ibot_head"] = build_head(backbone.embed_dim, heads["ibot"])
        teacher = nn.ModuleDict(modules)
        teacher.backbone.set_drop_path(0.0)
        return teacher.requires_grad_(False).eval()

    def _check_compatible(self) -> None:
        for branch, s_head, t_head in zip(
            ("DINO", "iBOT"), self._heads(self.student), self._heads(self.teacher), strict=True
        ):
            k_s, k_t = num_prototypes(s_head), num_prototypes(t_head)
            if k_s != k_t:
                raise PrototypeMismatchError(
                    f"distillation: the student {branch} head has {k_s} prototypes but the "
                    f"teacher's has {k_t}; the cross-entropy is over the teacher's prototypes, "
                    f"so set the student head's out_dim to {k_t}"
                )
        p_s, p_t = self.student.backbone.patch_size, self.teacher.backbone.patch_size
        if p_s != p_t:
            raise ValueError(
                f"distillation: student patch size {p_s} != teacher patch size {p_t}; the iBOT "
                "loss compares patch tokens position by position"
            )

    def train(self, mode: bool = True) -> "DINOv2DistillLitModule":
        super().train(mode)
        self.student_ema.eval()
        return self

    @property
    def eval_backbone(self) -> DINOv2Backbone:
        """The student EMA's backbone: the final distilled model (spec §7)."""
        return self.student_ema.backbone

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.student_ema, self.student)]

    def _masks(self, batch: Mapping[str, torch.Tensor]) -> None:
        return None

    def _ibot_tokens(
        self, batch: Mapping[str, torch.Tensor], n_crops: int, n_patches: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        device = batch["global_crops"].device
        idx = torch.arange(n_crops * n_patches, device=device)
        return idx, torch.full((n_crops * n_patches,), 1.0 / n_patches, device=device)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage != "fit":
            return
        path = self.hparams.teacher_checkpoint
        if not path:
            raise DINOv2CheckpointError(
                "distillation needs model.teacher_checkpoint=PATH (a DINOv2 checkpoint with "
                "teacher and heads)"
            )
        self.load_teacher(path)

    def load_teacher(self, path: str) -> None:
        """The teacher (with heads) and its centers from a D6 checkpoint."""
        state = read_state_dict(path)
        require_head_complete(state, path)
        saved = sub_state(state, "teacher.")
        for branch, name in (("DINO", "dino_head"), ("iBOT", "ibot_head")):
            key = f"{name}.{PROTOTYPES}"
            if key in saved and name in self.teacher:
                k_saved, k_cfg = saved[key].shape[0], num_prototypes(self.teacher[name])
                if k_saved != k_cfg:
                    raise PrototypeMismatchError(
                        f"{path}: the teacher {branch} head has {k_saved} prototypes, the "
                        f"configured teacher (and student) {k_cfg}; set both heads' out_dim to "
                        f"{k_saved}"
                    )
        load_matching(self.teacher, saved, f"teacher of {path}")
        for name in ("dino_targets", "ibot_targets"):
            centers, module = sub_state(state, f"{name}."), getattr(self, name)
            if centers and module.state_dict():
                load_matching(module, centers, f"{name} of {path}")
        log.info("distillation teacher loaded from %s", path)
