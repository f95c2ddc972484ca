"""Layer-wise channel pruning of a pre-trained CNN, in plain PyTorch (spec §2.8, §2.10, §7).

For every prunable pair in forward order: accumulate the consumer's statistics (inputs from the
partly pruned network, or the original with ``input_source=original``; targets always from the
original), choose the kept channels with the configured selector, refit the consumer on them and
remove the rest physically. Baseline selectors (group-LASSO, L1-norm, random) run through the
same statistics, refit and surgery, optionally at per-layer widths taken from another run.
With ``resnet_stage=joint`` ResNet-18's stage groups join the plan, each placed at its first
consumer in forward order; targets of a consumer whose outputs an earlier step already removed
are restricted to the channels it still has.
"""

import copy
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from lightning_modules.components.cnn import ResNet18
from lightning_modules.components.sparse.baselines import l1_norm_select, random_select
from lightning_modules.components.sparse.budget import (
    counts_for_frac,
    keep_frac_for_param_sparsity,
)
from lightning_modules.components.sparse.calibration import calibration_batches
from lightning_modules.components.sparse.channel_surgery import (
    remove_channels,
    remove_group_channels,
)
from lightning_modules.components.sparse.entropic_solver import solve_group, solve_layer
from lightning_modules.components.sparse.group_lasso import bisect_alpha, group_lasso
from lightning_modules.components.sparse.keep_rules import select_channels
from lightning_modules.components.sparse.layer_stats import LayerStats, accumulate_layer_stats
from lightning_modules.components.sparse.prunable_pairs import (
    PrunablePair,
    expected_input_shape,
    prunable_pairs,
)
from lightning_modules.components.sparse.prune_config import PruneConfig
from lightning_modules.components.sparse.refit import refit_weights
from lightning_modules.components.sparse.stage_groups import (
    StageGroup,
    consumer_group_size,
    resnet_stage_groups,
)

WidthsSpec = Mapping[str, int] | Sequence[int] | str | Path


@dataclass
class LayerReport:
    """What happened to one prunable pair; ``kept`` indexes the original producer's channels."""

    producer: str
    consumer: str
    selector: str
    n_channels: int
    n_kept: int
    kept: list[int]
    objective: float | None
    heldout_objective: float | None
    iterations: int
    seconds: float
    rows: int


@dataclass
class _Choice:
    kept: torch.Tensor
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    objective: float | None = None
    heldout: float | None = None
    iterations: int = 0


def kept_counts(report: Sequence[LayerReport]) -> dict[str, int]:
    """{producer: kept count}, the JSON a baseline run reads back as ``widths_from``."""
    return {layer.producer: layer.n_kept for layer in report}


def report_to_json(report: Sequence[LayerReport], path: str | Path) -> None:
    """Write the per-layer report (and kept counts) as JSON."""
    payload = {"kept_counts": kept_counts(report), "layers": [asdict(r) for r in report]}
    Path(path).write_text(json.dumps(payload, indent=2))


def _target_counts(
    model: nn.Module, pairs: list[PrunablePair], cfg: PruneConfig, widths_from: WidthsSpec | None
) -> list[int | None]:
    """Per-pair kept counts from ``widths_from`` or the budget, else None (automatic mode)."""
    if widths_from is not None:
        spec = widths_from
        if isinstance(spec, str | Path):
            spec = json.loads(Path(spec).read_text())
            spec = spec.get("kept_counts", spec) if isinstance(spec, dict) else spec
        if isinstance(spec, Mapping):
            missing = [p.producer for p in pairs if p.producer not in spec]
            if missing:
                raise ValueError(f"widths_from has no count for layers {missing}")
            return [int(spec[p.producer]) for p in pairs]
        if len(spec) != len(pairs):
            raise ValueError(f"widths_from lists {len(spec)} counts for {len(pairs)} layers")
        return [int(c) for c in spec]
    if cfg.mode != "budget":
        return [None] * len(pairs)
    frac = cfg.keep_frac
    if frac is None:
        frac = keep_frac_for_param_sparsity(model, cfg.target_param_sparsity, cfg)
    return list(counts_for_frac(model, frac, cfg))


def _baseline_refit(stats: LayerStats, kept: torch.Tensor, cfg: PruneConfig) -> tuple:
    if cfg.refit == "none":  # original consumer columns, original bias
        return None, None
    return refit_weights(stats, kept, "plain")  # "weighted" needs a w: plain for baselines


def _choose(
    net: nn.Module,
    pair: PrunablePair,
    idx: int,
    stats: LayerStats,
    held: LayerStats | None,
    cfg: PruneConfig,
    n_keep: int | None,
) -> _Choice:
    sel = cfg.selector
    if sel == "entropic":
        res = solve_layer(stats, cfg, held, n_keep)
        return _Choice(
            res.kept, res.weight, res.bias, res.objective, res.heldout_objective, res.iterations
        )
    n_channels = stats.n_channels
    if sel == "group_lasso":
        if n_keep is None and cfg.group_lasso_alpha is None:
            raise ValueError("selector=group_lasso needs widths (budget / widths_from) or an alpha")
        gl = bisect_alpha(stats, n_keep) if n_keep else group_lasso(stats, cfg.group_lasso_alpha)
        kept = gl.kept if n_keep else select_channels(gl.norms, cfg, max(1, gl.kept.numel()))
        iterations = gl.iterations
    elif n_keep is None:
        raise ValueError(f"selector={sel} needs per-layer widths: prune.mode=budget or widths_from")
    elif sel == "l1_norm":
        kept, iterations = l1_norm_select(net.get_submodule(pair.producer).weight, n_keep), 0
    else:
        kept, iterations = random_select(n_channels, n_keep, cfg.seed + idx), 0
    weight, bias = _baseline_refit(stats, kept, cfg)
    return _Choice(kept, weight, bias, iterations=iterations)


def entropic_sparsify(
    original: nn.Module,
    calib: torch.Tensor | Iterable,
    cfg: PruneConfig | None = None,
    selector: str | None = None,
    widths_from: WidthsSpec | None = None,
    batch_size: int = 128,
) -> tuple[nn.Module, list[LayerReport]]:
    """Prune ``original`` layer by layer; the original is left unchanged.

    Args:
        original: a supported pre-trained network (LeNet5, LeNet5Caffe, VGG16BN, ResNet18).
        calib: calibration images (N, C, H, W), or a re-iterable of such batches / (images, ...)
            tuples. Run in eval mode without gradients.
        cfg: flags (default ``PruneConfig()``); ``selector`` overrides ``cfg.selector``.
        widths_from: per-layer kept counts to match: {producer: count}, a list in pair order,
            or a JSON file written by ``report_to_json`` (or holding such a dict / list).
        batch_size: images per forward when ``calib`` is a tensor.

    Returns:
        (the physically pruned copy, one ``LayerReport`` per prunable pair in forward order).
    """
    cfg = PruneConfig() if cfg is None else cfg
    if selector is not None:
        cfg = PruneConfig(**{**asdict(cfg), "selector": selector})
    was_training = original.training
    original.eval()
    try:
        net = copy.deepcopy(original).eval()
        pairs = prunable_pairs(net)
        counts = _target_counts(original, pairs, cfg, widths_from)
        like = next(original.parameters())
        batches, n_images = calibration_batches(
            calib, expected_input_shape(original), type(original).__name__, batch_size, like
        )
        steps: list[tuple[PrunablePair | StageGroup, int | None]] = list(
            zip(pairs, counts, strict=True)
        )
        if cfg.resnet_stage == "joint" and isinstance(net, ResNet18):
            steps = _in_forward_order(net, [*steps, *((g, None) for g in resnet_stage_groups(net))])
        out_kept: dict[str, torch.Tensor] = {}  # original output channels left, per pruned layer
        report = []
        for i, (step, n_keep) in enumerate(steps):
            if isinstance(step, StageGroup):
                report.append(
                    _prune_group(original, net, step, i, batches, n_images, cfg, out_kept)
                )
            else:
                report.append(
                    _prune_pair(original, net, step, i, n_keep, batches, n_images, cfg, out_kept)
                )
    finally:
        original.train(was_training)
    return net, report


def _in_forward_order(net: nn.Module, steps: list) -> list:
    """Sort plan steps by the module position of their first consumer (stable)."""
    position = {name: i for i, (name, _) in enumerate(net.named_modules())}

    def first_consumer(item) -> int:
        step = item[0]
        if isinstance(step, StageGroup):
            return min(position[c.layer] for c in step.consumers)
        return position[step.consumer]

    return sorted(steps, key=first_consumer)


def _record_kept(out_kept: dict[str, torch.Tensor], net, layer: str, keep: torch.Tensor) -> None:
    """Compose ``keep`` (current numbering) with what ``layer`` kept before (original numbering)."""
    n_now = net.get_submodule(layer).weight.shape[0]
    before = out_kept.get(layer, torch.arange(n_now))
    out_kept[layer] = before[keep.cpu()]


def _layer_stats(original, net, consumer, group, idx, batches, n_images, cfg, out_kept):
    source = original if cfg.input_source == "original" else net
    return accumulate_layer_stats(
        source, original, consumer, batches, n_images, group,
        cfg.max_rows, cfg.holdout_frac, cfg.seed + idx, out_kept.get(consumer),
    )  # fmt: skip


def _prune_group(original, net, group, idx, batches, n_images, cfg, out_kept) -> LayerReport:
    """Joint entropic selection of a ResNet stage group, refit of every consumer, surgery."""
    start = time.perf_counter()
    n_channels = net.get_submodule(group.producers[0][0]).weight.shape[0]
    fits, helds = [], []
    for consumer in group.consumers:
        size = consumer_group_size(net, consumer.layer)
        fit, held = _layer_stats(
            original, net, consumer.layer, size, idx, batches, n_images, cfg, out_kept
        )
        fits.append(fit)
        helds.append(held)
    res = solve_group(fits, cfg, helds)
    for conv, _ in group.producers:
        _record_kept(out_kept, net, conv, res.kept)
    remove_group_channels(net, group, res.kept, res.weights, res.biases)
    return LayerReport(
        producer=group.name,
        consumer=",".join(c.layer for c in group.consumers),
        selector=cfg.selector,
        n_channels=n_channels,
        n_kept=res.kept.numel(),
        kept=res.kept.tolist(),
        objective=res.objective,
        heldout_objective=res.heldout_objective,
        iterations=res.iterations,
        seconds=time.perf_counter() - start,
        rows=sum(f.T for f in fits),
    )


def _prune_pair(original, net, pair, idx, n_keep, batches, n_images, cfg, out_kept) -> LayerReport:
    """Statistics → selection → refit → surgery for one pair of ``net`` (modified in place)."""
    start = time.perf_counter()
    n_channels = net.get_submodule(pair.producer).weight.shape[0]
    if n_keep is not None and not 1 <= n_keep <= n_channels:
        raise ValueError(f"{pair.producer}: kept count {n_keep} outside [1, {n_channels}]")
    consumer = net.get_submodule(pair.consumer)
    if isinstance(consumer, nn.Conv2d):
        group = consumer.kernel_size[0] * consumer.kernel_size[1]
    else:
        group = pair.flatten_group_size
    stats, held = _layer_stats(
        original, net, pair.consumer, group, idx, batches, n_images, cfg, out_kept
    )
    choice = _choose(net, pair, idx, stats, held, cfg, n_keep)
    _record_kept(out_kept, net, pair.producer, choice.kept)
    remove_channels(net, pair, choice.kept, choice.weight, choice.bias)
    return LayerReport(
        producer=pair.producer,
        consumer=pair.consumer,
        selector=cfg.selector,
        n_channels=n_channels,
        n_kept=choice.kept.numel(),
        kept=choice.kept.tolist(),
        objective=choice.objective,
        heldout_objective=choice.heldout,
        iterations=choice.iterations,
        seconds=time.perf_counter() - start,
        rows=stats.T,
    )
