"""Optimizer parameter groups with layer-wise lr decay (spec §5.1; reference ``param_groups.py``).

Groups carry multipliers, not values: the LitModule writes ``lr = lr(step)·lr_multiplier``
(or the last-layer lr for ``is_last_layer`` groups) and ``wd = wd(step)·wd_multiplier`` into each
group before every optimizer step, so schedules stay pure functions of the step (D4).
"""

import re
from typing import Any

from torch import nn

# Backbone parameters that live before the first block (layer_id 0).
_EMBEDDING_KEYS = (
    "pos_embed",
    "patch_embed",
    "cls_token",
    "reg_token",
    "register_tokens",
    "mask_token",
)
_BLOCK_RE = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def layer_id(name: str, num_blocks: int) -> int:
    """0 for embeddings and prefix tokens, i+1 for block i, ``num_blocks``+1 otherwise."""
    if any(key in name for key in _EMBEDDING_KEYS):
        return 0
    match = _BLOCK_RE.search(name)
    if match:
        return int(match.group(1)) + 1
    return num_blocks + 1


def param_multipliers(
    name: str,
    is_backbone: bool,
    num_blocks: int,
    layer_decay: float,
    patch_embed_lr_multiplier: float,
) -> dict[str, Any]:
    """``lr_multiplier``, ``wd_multiplier`` and ``is_last_layer`` for one parameter name."""
    lr_mult = 1.0  # heads always get 1
    if is_backbone:
        lr_mult = layer_decay ** (num_blocks + 1 - layer_id(name, num_blocks))
        if "patch_embed" in name:
            lr_mult *= patch_embed_lr_multiplier
    # No decay on biases, norms and LayerScale; pos_embed, tokens and prototype g keep it.
    no_wd = name.endswith(".bias") or "norm" in name or "gamma" in name
    return {
        "lr_multiplier": lr_mult,
        "wd_multiplier": 0.0 if no_wd else 1.0,
        "is_last_layer": "last_layer" in name,
    }


def build_param_groups(
    model: nn.Module,
    num_blocks: int,
    layer_decay: float = 0.9,
    patch_embed_lr_multiplier: float = 0.2,
    backbone_prefix: str = "backbone.",
) -> list[dict[str, Any]]:
    """Trainable parameters of ``model`` fused into groups of equal multipliers.

    Args:
        model: the student (e.g. a ModuleDict with ``backbone``, ``dino_head``, ``ibot_head``).
        num_blocks: backbone depth L.
        layer_decay: multiplier base; block i gets ``layer_decay^(L − i)`` (0.9 default, 1.0 L/g).
        patch_embed_lr_multiplier: extra factor on the patch embedding (0.2).
        backbone_prefix: names starting with it get layer-wise decay; others are heads (×1).

    Returns:
        AdamW-ready dicts with ``params``, ``param_names``, ``lr_multiplier``, ``wd_multiplier``
        and ``is_last_layer``. Frozen parameters (``requires_grad=False``) are excluded.
    """
    groups: dict[tuple, dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        mults = param_multipliers(
            name,
            name.startswith(backbone_prefix),
            num_blocks,
            layer_decay,
            patch_embed_lr_multiplier,
        )
        key = (mults["lr_multiplier"], mults["wd_multiplier"], mults["is_last_layer"])
        group = groups.setdefault(key, {"params": [], "param_names": [], **mults})
        group["params"].append(param)
        group["param_names"].append(name)
    return list(groups.values())
