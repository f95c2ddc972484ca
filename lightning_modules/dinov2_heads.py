"""DINO/iBOT heads as the DINOv2 systems build them: picklable, and sized from a config dict."""

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from lightning_modules.components.heads import DINOHead

HEAD_KEYS = ("out_dim", "hidden_dim", "bottleneck_dim", "nlayers")


class PicklableDINOHead(DINOHead):
    """``DINOHead`` that survives ``pickle`` (DDP ``start_method=spawn`` pickles the LitModule).

    PyTorch refuses to pickle parametrized modules (the weight-normed ``last_layer``); this head
    pickles that layer as its state dict and rebuilds it on unpickling. Parameter names, values,
    ``requires_grad`` flags, device and dtype are preserved, so state dicts are unchanged.
    """

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        modules = dict(state["_modules"])
        last = modules.pop("last_layer")
        state["_modules"] = modules
        state["_last_layer"] = {
            "state": last.state_dict(),
            "requires_grad": {n: p.requires_grad for n, p in last.named_parameters()},
        }
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        saved = state.pop("_last_layer")
        super().__setstate__(state)
        v = saved["state"]["parametrizations.weight.original1"]  # (K, bottleneck)
        layer = weight_norm(nn.Linear(v.shape[1], v.shape[0], bias=False))
        layer.to(device=v.device, dtype=v.dtype)
        layer.load_state_dict(saved["state"])
        for name, param in layer.named_parameters():
            param.requires_grad_(saved["requires_grad"][name])
        self._modules["last_layer"] = layer


def build_head(in_dim: int, cfg: Mapping[str, Any]) -> PicklableDINOHead:
    """A head on a backbone of width ``in_dim`` from ``{out_dim, hidden_dim, bottleneck_dim, nlayers}``."""
    unknown = set(cfg) - set(HEAD_KEYS)
    if unknown:
        raise ValueError(f"unknown head settings {sorted(unknown)}; expected keys {HEAD_KEYS}")
    return PicklableDINOHead(in_dim, **dict(cfg))


def num_prototypes(head: nn.Module) -> int:
    """K of a DINO head (rows of its prototype layer)."""
    weight: torch.Tensor = head.last_layer.weight
    return int(weight.shape[0])
