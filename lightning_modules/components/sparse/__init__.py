"""Entropic channel sparsification of CNNs (Barisin & Horenko, arXiv 2404.04734) and baselines.

Plain PyTorch building blocks: statistics, solver, selectors, surgery, counting and the
layer-wise pipeline ``entropic_sparsify``.
"""

from lightning_modules.components.sparse.channel_surgery import (
    build_pruned,
    remove_channels,
    widths_of,
)
from lightning_modules.components.sparse.counting import count_model, sparsity_report
from lightning_modules.components.sparse.entropic_solver import SolverResult, solve_layer
from lightning_modules.components.sparse.pipeline import (
    LayerReport,
    entropic_sparsify,
    kept_counts,
    report_to_json,
)
from lightning_modules.components.sparse.prunable_pairs import PrunablePair, prunable_pairs
from lightning_modules.components.sparse.prune_config import PruneConfig

__all__ = [
    "LayerReport",
    "PrunablePair",
    "PruneConfig",
    "SolverResult",
    "build_pruned",
    "count_model",
    "entropic_sparsify",
    "kept_counts",
    "prunable_pairs",
    "remove_channels",
    "report_to_json",
    "solve_layer",
    "sparsity_report",
    "widths_of",
]
