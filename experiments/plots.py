"""Figures of pruning runs, saved as PNG (matplotlib, headless)."""

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after matplotlib.use: the headless backend must come first


def kept_channels_chart(
    layers: Sequence[str],
    original: Sequence[int],
    kept: Sequence[int],
    path: str | Path,
    title: str,
) -> Path:
    """Per-layer bars: original width (light) and kept channels (dark), with the kept fraction."""
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(layers) + 2), 3.5))
    xs = range(len(layers))
    ax.bar(xs, original, color="#c6dbef", label="original")
    ax.bar(xs, kept, color="#2171b5", label="kept")
    for x, (o, k) in enumerate(zip(original, kept, strict=True)):
        ax.text(x, k, f"{100 * k / o:.0f}%", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(list(xs), layers, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("channels")
    return _save(fig, ax, title, path)


def sparsity_accuracy_curve(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    baseline_acc: float,
    path: str | Path,
    title: str,
    xlabel: str = "parameter sparsity (%)",
) -> Path:
    """Accuracy vs sparsity, one line per series, with the dense accuracy and a -0.5 pt band."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, (xs, ys) in series.items():
        order = sorted(range(len(xs)), key=lambda i: xs[i])
        ax.plot([xs[i] for i in order], [ys[i] for i in order], marker="o", label=name)
    ax.axhline(baseline_acc, color="k", lw=0.8, label="dense")
    ax.axhline(baseline_acc - 0.5, color="k", lw=0.8, ls="--", label="dense − 0.5 pt")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    return _save(fig, ax, title, path)


def _save(fig: plt.Figure, ax: plt.Axes, title: str, path: str | Path) -> Path:
    """Title, legend, layout; write the PNG and free the figure."""
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
