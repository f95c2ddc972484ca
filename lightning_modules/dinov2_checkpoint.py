"""Reading DINOv2 (D6) checkpoints into a system: init for continued pretraining, teacher loading.

A D6 checkpoint's ``state_dict`` holds ``student.*`` and ``teacher.*`` (backbone, ``dino_head``,
optionally ``ibot_head``) and, with centering, ``dino_targets.center`` / ``ibot_targets.center``.
"""

import math
from pathlib import Path
from typing import Any

import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

from experiments.errors import CheckpointError

POS_EMBED = "backbone.vit.pos_embed"


class DINOv2CheckpointError(CheckpointError, ValueError):
    """A checkpoint is missing, not head-complete (D6), or does not fit the configured model.

    A user error: the command-line entry points print it as ``error: ...`` and exit with 2.
    """


class PrototypeMismatchError(DINOv2CheckpointError):
    """Student and teacher heads have different prototype counts K (distillation, spec §7)."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a Lightning checkpoint, on CPU."""
    path = Path(path)
    if not path.is_file():
        raise DINOv2CheckpointError(f"checkpoint {path} does not exist")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if "state_dict" not in checkpoint:
        raise DINOv2CheckpointError(f"{path} holds no 'state_dict'; is it a Lightning checkpoint?")
    return checkpoint["state_dict"]


def require_head_complete(state_dict: dict[str, Any], path: str | Path) -> None:
    """Raise unless the checkpoint holds a teacher backbone and its DINO head (D6)."""
    for prefix in ("teacher.backbone.", "teacher.dino_head."):
        if not any(k.startswith(prefix) for k in state_dict):
            raise DINOv2CheckpointError(
                f"{path} holds no '{prefix}*' weights: it is not a head-complete DINOv2 "
                "checkpoint (D6). Backbone-only weights cannot continue pretraining; start "
                "from timm weights with model.backbone.pretrained=true instead."
            )


def sub_state(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Entries under ``prefix`` with the prefix stripped."""
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def _resample_pos_embed(saved: torch.Tensor, target: torch.Tensor, name: str) -> torch.Tensor:
    """Bicubic resampling of the patch part of a (1, P+N, D) positional embedding (spec §2.3)."""
    n_old, n_new = saved.shape[1], target.shape[1]
    for prefix in (0, 1):
        g_old, g_new = math.isqrt(n_old - prefix), math.isqrt(n_new - prefix)
        if g_old**2 == n_old - prefix and g_new**2 == n_new - prefix:
            return resample_abs_pos_embed(
                saved.float(), (g_new, g_new), (g_old, g_old), num_prefix_tokens=prefix
            ).to(target.dtype)
    raise DINOv2CheckpointError(
        f"cannot resample {name} {tuple(saved.shape)} to {tuple(target.shape)}"
    )


def load_matching(module: nn.Module, saved: dict[str, torch.Tensor], what: str) -> None:
    """Load ``saved`` into ``module`` strictly; positional embeddings of another grid are resampled.

    Any other missing, unexpected or mis-shaped entry raises with the names, so a wrong
    architecture never loads silently.
    """
    expected = module.state_dict()
    saved = dict(saved)
    for key in [k for k in saved if k.endswith(POS_EMBED) or k == POS_EMBED]:
        if key in expected and saved[key].shape != expected[key].shape:
            saved[key] = _resample_pos_embed(saved[key], expected[key], key)
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    shapes = [
        f"{k}: checkpoint {tuple(saved[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in saved and saved[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        raise DINOv2CheckpointError(
            f"{what} does not fit the configured model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, shape {shapes[:5]}"
        )
    module.load_state_dict(saved)
