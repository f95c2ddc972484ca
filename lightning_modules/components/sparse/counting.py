"""Parameter, MAC and channel counts of dense, masked and physically pruned models (spec §3, R8).

Conventions (spec §3): parameters = conv/linear weights + biases + BN γ, β (buffers such as BN
running statistics are excluded); one MAC = one multiply-accumulate of a conv or linear layer
(BN, ReLU, pooling and bias adds excluded); FLOPs ≈ 2·MACs. Channels = output channels/features
of every conv/linear layer except the last one (the classifier outputs).

Masks are found as buffers ``<param>_mask`` next to the parameter (``<param>_orig`` when
``torch.nn.utils.prune`` reparametrised it) or passed explicitly as ``{"<module>.<param>": mask}``.
A masked entry counts as removed; a dense model's zero-valued weights still count.
"""

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

_COUNTED = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class ModelCounts:
    """Absolute counts of one model for one input image."""

    params: int
    macs: int
    channels: int

    @property
    def flops(self) -> int:
        return 2 * self.macs


@dataclass(frozen=True)
class SparsityReport:
    """Counts of a model and a reference, and the three sparsity measures in percent."""

    counts: ModelCounts
    reference: ModelCounts
    param_sparsity: float
    channel_sparsity: float
    flop_sparsity: float


def _mask_of(
    module: nn.Module, module_name: str, param_name: str, masks: Mapping[str, torch.Tensor] | None
) -> torch.Tensor | None:
    base = param_name.removesuffix("_orig")
    full = f"{module_name}.{base}" if module_name else base
    if masks is not None and full in masks:
        return masks[full]
    return dict(module.named_buffers(recurse=False)).get(f"{base}_mask")


def _kept_entries(
    module: nn.Module, module_name: str, param_name: str, masks: Mapping[str, torch.Tensor] | None
) -> torch.Tensor:
    """0/1 tensor shaped like the parameter: which entries are not masked."""
    param = getattr(module, param_name)
    mask = _mask_of(module, module_name, param_name, masks)
    if mask is None:
        return torch.ones_like(param, dtype=torch.bool)
    return torch.broadcast_to(mask != 0, param.shape)


def count_params(model: nn.Module, masks: Mapping[str, torch.Tensor] | None = None) -> int:
    """Number of unmasked parameters (all ``nn.Parameter`` of the model; running stats excluded)."""
    total = 0
    for name, module in model.named_modules():
        for pname, param in module.named_parameters(recurse=False):
            if _mask_of(module, name, pname, masks) is None:
                total += param.numel()  # no data access: works on the meta device too
            else:
                total += int(_kept_entries(module, name, pname, masks).sum())
    return total


def _layer_macs_and_channels(
    module: nn.Module, name: str, out: torch.Tensor, masks: Mapping[str, torch.Tensor] | None
) -> tuple[int, int]:
    pname = "weight_orig" if hasattr(module, "weight_orig") else "weight"
    kept = _kept_entries(module, name, pname, masks)
    # Each kept weight entry is used once per output position (conv) or leading index (linear).
    positions = out[0].numel() // kept.shape[0]
    alive_channels = int(kept.flatten(1).any(dim=1).sum())
    return int(kept.sum()) * positions, alive_channels


def count_model(
    model: nn.Module,
    input_shape: tuple[int, ...],
    masks: Mapping[str, torch.Tensor] | None = None,
) -> ModelCounts:
    """Count params, MACs per image and channels with one forward of a zero image.

    Args:
        input_shape: (C, H, W) of one image; spatial sizes come from forward hooks.
        masks: optional explicit masks, ``"<module>.<param>"`` → 0/1 tensor.
    """
    per_layer: list[tuple[int, int]] = []
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, _COUNTED):

            def hook(mod, _inp, out, name=name):
                per_layer.append(_layer_macs_and_channels(mod, name, out, masks))

            hooks.append(module.register_forward_hook(hook))
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, dtype=param.dtype, device=param.device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    macs = sum(m for m, _ in per_layer)
    channels = sum(c for _, c in per_layer[:-1])  # the last layer's outputs are the logits
    return ModelCounts(params=count_params(model, masks), macs=macs, channels=channels)


def _percent_removed(value: int, reference: int) -> float:
    return 100.0 * (1.0 - value / reference) if reference else 0.0


def sparsity_report(
    model: nn.Module,
    reference: nn.Module | ModelCounts,
    input_shape: tuple[int, ...],
    masks: Mapping[str, torch.Tensor] | None = None,
) -> SparsityReport:
    """% params, % channels and % FLOPs removed from ``reference`` (a dense model or its counts)."""
    counts = count_model(model, input_shape, masks)
    ref = reference if isinstance(reference, ModelCounts) else count_model(reference, input_shape)
    return SparsityReport(
        counts=counts,
        reference=ref,
        param_sparsity=_percent_removed(counts.params, ref.params),
        channel_sparsity=_percent_removed(counts.channels, ref.channels),
        flop_sparsity=_percent_removed(counts.macs, ref.macs),
    )
