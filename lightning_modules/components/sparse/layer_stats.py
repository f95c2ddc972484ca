"""Per-layer sufficient statistics of the regression Y ≈ X·Bᵀ + b (spec §2.1, §2.5, §2.8).

X holds the consumer layer's inputs unfolded with the consumer's own kernel, stride, padding and
dilation (one row = one image × output position), Y the consumer's pre-BN outputs in the
*original* network at the same positions. Only float64 moments are accumulated over mini-batches,
never the full X. A random 10 % of the rows go to a held-out set used to choose among restarts.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class LayerStats:
    """Centred moments of one layer's regression, D = C_in·group_size columns.

    Attributes:
        G: (D, D) XᵀX/T of centred X.
        C_xy: (D, C_out) XᵀY/T of centred X, Y.
        mu_x: (D,) column means of X.   mu_y: (C_out,) column means of Y.
        y_var: (C_out,) per-output variance of Y; v_y = y_var.sum().
        T: number of rows.   group_size: columns per input channel (k·k, H·W after a flatten, 1).
    """

    G: torch.Tensor
    C_xy: torch.Tensor
    mu_x: torch.Tensor
    mu_y: torch.Tensor
    y_var: torch.Tensor
    T: int
    group_size: int

    @property
    def n_channels(self) -> int:
        return self.G.shape[0] // self.group_size

    @property
    def v_y(self) -> float:
        """Total target variance tr(YᵀY)/T of centred Y."""
        return float(self.y_var.sum())

    @property
    def v_x(self) -> float:
        """Mean input variance tr(XᵀX)/(T·D) of centred X."""
        return float(torch.diagonal(self.G).mean())


class _Moments:
    """Running float64 sums Σx, Σy, ΣxxᵀΣ, Σxyᵀ, Σy² and the row count."""

    def __init__(self) -> None:
        self.n = 0
        self.sx = self.sy = self.sxx = self.sxy = self.syy = None

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if x.shape[0] == 0:
            return
        parts = (x.sum(0), y.sum(0), x.T @ x, x.T @ y, (y * y).sum(0))
        if self.sx is None:
            self.sx, self.sy, self.sxx, self.sxy, self.syy = parts
        else:
            for name, p in zip(("sx", "sy", "sxx", "sxy", "syy"), parts, strict=True):
                setattr(self, name, getattr(self, name) + p)
        self.n += x.shape[0]

    def finalize(self, group_size: int) -> LayerStats | None:
        if self.n == 0:
            return None
        mu_x, mu_y = self.sx / self.n, self.sy / self.n
        return LayerStats(
            G=self.sxx / self.n - torch.outer(mu_x, mu_x),
            C_xy=self.sxy / self.n - torch.outer(mu_x, mu_y),
            mu_x=mu_x,
            mu_y=mu_y,
            y_var=(self.syy / self.n - mu_y * mu_y).clamp_min(0.0),
            T=self.n,
            group_size=group_size,
        )


class _Captured(Exception):
    """Raised by a hook to stop a forward pass once the wanted tensor is captured."""


def _capture(model: nn.Module, layer_name: str, images: torch.Tensor, want_input: bool):
    layer = model.get_submodule(layer_name)
    box: list[torch.Tensor] = []

    def hook(_mod, inp, out):
        box.append(inp[0] if want_input else out)
        raise _Captured

    handle = layer.register_forward_hook(hook)
    try:
        model(images)
    except _Captured:
        pass
    finally:
        handle.remove()
    if not box:
        raise RuntimeError(f"layer {layer_name!r} was not reached by the forward pass")
    return box[0]


def _as_rows(layer: nn.Module, inp: torch.Tensor, out: torch.Tensor):
    """(B, D, L) unfolded inputs and (B, C_out, L) outputs of a Conv2d or Linear layer."""
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1:
            raise ValueError("grouped convolutions are not supported as consumers")
        cols = F.unfold(
            inp, layer.kernel_size, layer.dilation, layer.padding, layer.stride
        )  # (B, C_in·kh·kw, L), channel-major columns like weight.reshape(C_out, -1)
        return cols, out.flatten(2)
    return inp.flatten(1).unsqueeze(-1), out.flatten(1).unsqueeze(-1)


@torch.no_grad()
def accumulate_layer_stats(
    input_net: nn.Module,
    target_net: nn.Module,
    consumer: str,
    batches: Callable[[], Iterable[torch.Tensor]],
    n_images: int,
    group_size: int,
    max_rows: int = 200_000,
    holdout_frac: float = 0.1,
    seed: int = 0,
    target_channels: torch.Tensor | None = None,
) -> tuple[LayerStats, LayerStats | None]:
    """Fit and held-out statistics of one consumer layer.

    Args:
        input_net: network whose consumer inputs form X (the partly pruned one, or the original).
        target_net: the original network; its consumer outputs (pre-BN) form Y.
        consumer: module path of the consumer (same in both networks).
        batches: callable returning a fresh iterable of (B, C, H, W) image batches.
        n_images: number of calibration images, to spread ``max_rows`` evenly over images.
        group_size: columns per input channel (k·k for conv; H·W for a flatten→linear; 1).
        holdout_frac: fraction of rows (random) held out for restart selection.
        target_channels: original output channels the consumer still has (when an earlier step
            already pruned its outputs, e.g. a conv2 that also writes a ResNet stage); None = all.

    Returns:
        (fit stats, held-out stats or None if no row was held out).
    """
    layer = input_net.get_submodule(consumer)
    gen = torch.Generator().manual_seed(seed)
    fit, held = _Moments(), _Moments()
    per_image = max(1, max_rows // max(1, n_images))
    for images in batches():
        x_in = _capture(input_net, consumer, images, want_input=True)
        y_out = _capture(target_net, consumer, images, want_input=False)
        if target_channels is not None:
            y_out = y_out[:, target_channels.to(y_out.device)]
        cols, ys = _as_rows(layer, x_in, y_out)
        batch, _, n_pos = cols.shape
        if ys.shape[-1] != n_pos:
            raise ValueError(f"{consumer}: {n_pos} input positions but {ys.shape[-1]} outputs")
        take = min(per_image, n_pos)
        # Same random positions for X and Y; rows chosen per image so every image contributes.
        pos = torch.stack([torch.randperm(n_pos, generator=gen)[:take] for _ in range(batch)])
        pos = pos.to(cols.device)
        x = torch.gather(cols, 2, pos.unsqueeze(1).expand(-1, cols.shape[1], -1))
        y = torch.gather(ys, 2, pos.unsqueeze(1).expand(-1, ys.shape[1], -1))
        x = x.permute(0, 2, 1).reshape(-1, cols.shape[1]).double()
        y = y.permute(0, 2, 1).reshape(-1, ys.shape[1]).double()
        is_held = (torch.rand(x.shape[0], generator=gen) < holdout_frac).to(x.device)
        fit.add(x[~is_held], y[~is_held])
        held.add(x[is_held], y[is_held])
    stats = fit.finalize(group_size)
    if stats is None:
        raise ValueError(f"{consumer}: no calibration rows were collected")
    return stats, held.finalize(group_size)


def stats_from_rows(x: torch.Tensor, y: torch.Tensor, group_size: int) -> LayerStats:
    """Statistics of explicit rows: x (T, D), y (T, C_out); for synthetic problems and tests."""
    moments = _Moments()
    moments.add(x.double(), y.double())
    stats = moments.finalize(group_size)
    if stats is None:
        raise ValueError("stats_from_rows needs at least one row")
    return stats
