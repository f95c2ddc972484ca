"""Channel selectors for ``PruningScheduleCallback``: which channels of a pair stay.

A selector maps (network, prunable pair, kept count, global step) to the sorted kept channel
indices. Channels already removed (mask 0) are never chosen again, so pruning is monotone.
"""

from collections.abc import Callable
from dataclasses import asdict

import torch
from torch import nn

from lightning_modules.components.sparse.baselines import l1_norm_select, random_select
from lightning_modules.components.sparse.calibration import calibration_batches
from lightning_modules.components.sparse.entropic_solver import solve_layer
from lightning_modules.components.sparse.layer_stats import accumulate_layer_stats
from lightning_modules.components.sparse.prunable_pairs import PrunablePair, expected_input_shape
from lightning_modules.components.sparse.prune_config import PruneConfig

MASK_NAME = "channel_mask"

#: selector(net, pair, n_keep, step) -> sorted kept channel indices (among all channels)
Selector = Callable[[nn.Module, PrunablePair, int, int], torch.Tensor]


def select_l1_norm(net: nn.Module, pair: PrunablePair, n_keep: int, step: int) -> torch.Tensor:
    """Producer filters of largest L1 norm; masked channels count as norm 0."""
    mask = net.get_submodule(pair.consumer).get_buffer(MASK_NAME)
    weight = net.get_submodule(pair.producer).weight.detach()
    return l1_norm_select(weight * mask.view(-1, *[1] * (weight.dim() - 1)), n_keep)


def select_random(net: nn.Module, pair: PrunablePair, n_keep: int, step: int) -> torch.Tensor:
    """Uniformly random among the still-unmasked channels, seeded by the step."""
    mask = net.get_submodule(pair.consumer).get_buffer(MASK_NAME)
    alive = mask.nonzero().flatten()
    pick = random_select(len(alive), min(n_keep, len(alive)), seed=step)
    return torch.sort(alive[pick]).values


class EntropicChannelSelector:
    """Keeps the channels of largest entropic importance w (spec §2.5), solved on the current net.

    Statistics come from the network as it is at the pruning event (masked inputs are zero), in
    eval mode on fixed calibration images; the solver seed is the global step, so a resumed run
    selects exactly what an uninterrupted one does.
    """

    def __init__(self, calibration: torch.Tensor, prune: PruneConfig) -> None:
        self.calibration = calibration
        self.cfg = PruneConfig(**{**asdict(prune), "mode": "auto"})

    @torch.no_grad()
    def __call__(self, net: nn.Module, pair: PrunablePair, n_keep: int, step: int) -> torch.Tensor:
        consumer = net.get_submodule(pair.consumer)
        group = consumer.kernel_size[0] * consumer.kernel_size[1] if isinstance(
            consumer, nn.Conv2d) else pair.flatten_group_size  # fmt: skip
        was_training = net.training
        net.eval()  # BN running statistics must not move
        try:
            batches, n = calibration_batches(
                self.calibration, expected_input_shape(net), type(net).__name__, 256,
                consumer.weight,
            )  # fmt: skip
            stats, held = accumulate_layer_stats(
                net, net, pair.consumer, batches, n, group, self.cfg.max_rows,
                self.cfg.holdout_frac, seed=step,
            )  # fmt: skip
            w = solve_layer(stats, self.cfg, held).w.to(consumer.weight.device)
        finally:
            net.train(was_training)
        w = w.masked_fill(consumer.get_buffer(MASK_NAME) == 0, -1.0)
        return torch.sort(torch.argsort(w, descending=True, stable=True)[:n_keep]).values
