"""Collect ``experiments/sparsify.py`` results into a sparsity-accuracy curve (table, PNG, W&B).

    python experiments/sparsify.py -m experiment=sparsify_lenet5_mnist source_ckpt=PATH \
        prune.eps_entropy=1e-4,1e-3,1e-2,1e-1
    python experiments/benchmarks/sparsity_curve.py logs/sparsify/multirun/<date>

Every ``result.json`` under the given folders is one point. The x axis is the headline sparsity
(``report.headline`` of the runs: params, channels or flops; ``--headline`` overrides). The table
marks the sparsest point within ``--max-loss`` accuracy points of the dense network, before and
after fine-tuning. The curve is saved as PNG and logged, with the table, to a W&B run (offline
unless WANDB_MODE says otherwise; ``wandb sync`` uploads it later).
"""

import argparse
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import wandb

from experiments.plots import sparsity_accuracy_curve
from experiments.sparsify import HEADLINE_KEYS as HEADLINES

COLUMNS = ("run", "params %", "channels %", "FLOPs %", "acc before FT", "acc after FT")


def load_points(folders: Sequence[str | Path]) -> list[dict]:
    """Every result.json below ``folders`` (sorted by path), with its folder as ``name``.

    Raises:
        FileNotFoundError: if no result.json is found (names the folders).
    """
    paths = sorted(p for folder in folders for p in Path(folder).rglob("result.json"))
    if not paths:
        raise FileNotFoundError(f"no result.json under {[str(f) for f in folders]}")
    return [{**json.loads(p.read_text()), "name": p.parent.name} for p in paths]


def headline_key(points: Sequence[dict], override: str | None = None) -> str:
    """The result key of the headline sparsity: ``override`` or the runs' ``report.headline``."""
    name = override or points[0].get("headline", "params")
    if name not in HEADLINES:
        raise ValueError(f"headline must be one of {sorted(HEADLINES)}, got {name!r}")
    return HEADLINES[name]


def sparsest_within(
    points: Sequence[dict], acc_key: str, x_key: str, max_loss: float
) -> dict | None:
    """The point with the highest ``x_key`` whose ``acc_key`` lost at most ``max_loss`` points."""
    ok = [p for p in points if acc_key in p and p["dense_test_acc"] - p[acc_key] <= max_loss]
    return max(ok, key=lambda p: p[x_key]) if ok else None


def table_rows(points: Sequence[dict]) -> list[list]:
    """One row per point, sorted by parameter sparsity (NaN where fine-tuning was off)."""
    rows = []
    for p in sorted(points, key=lambda p: p["param_sparsity"]):
        rows.append([
            p["name"], p["param_sparsity"], p["channel_sparsity"], p["flop_sparsity"],
            p["pruned_test_acc"], p.get("finetuned_test_acc", math.nan),
        ])  # fmt: skip
    return rows


def markdown(rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append(
            "| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row) + " |"
        )
    return "\n".join(lines)


def curve_series(points: Sequence[dict], x_key: str) -> dict[str, tuple[list, list]]:
    xs = [p[x_key] for p in points]
    series = {"no fine-tune": (xs, [p["pruned_test_acc"] for p in points])}
    if all("finetuned_test_acc" in p for p in points):
        series["fine-tuned"] = (xs, [p["finetuned_test_acc"] for p in points])
    return series


def log_to_wandb(png: Path, rows: Sequence[Sequence], out: Path, title: str) -> Path:
    """One W&B run holding the curve image and the table; returns the run's local folder."""
    run = wandb.init(project="dino-family", name=title, job_type="sparsity_curve", dir=str(out),
                     mode=os.environ.get("WANDB_MODE", "offline"))  # fmt: skip
    try:
        run.log({
            "sparsify/sparsity_accuracy_curve": wandb.Image(str(png)),
            "sparsify/points": wandb.Table(columns=list(COLUMNS), data=[list(r) for r in rows]),
        })  # fmt: skip
        return Path(run.dir).parent
    finally:
        run.finish()


def collect(folders: Sequence[str | Path], out: Path, headline: str | None = None,
            max_loss: float = 0.5, title: str = "sparsity-accuracy") -> dict:  # fmt: skip
    """Table, curve PNG and W&B run for the results under ``folders``; returns a summary."""
    points = load_points(folders)
    x_key = headline_key(points, headline)
    out.mkdir(parents=True, exist_ok=True)
    dense = points[0]["dense_test_acc"]
    png = sparsity_accuracy_curve(curve_series(points, x_key), dense, out / "curve.png", title,
                                  xlabel=f"{x_key.replace('_', ' ')} (%)")  # fmt: skip
    rows = table_rows(points)
    print(markdown(rows))
    summary = {"dense_test_acc": dense, "headline": x_key, "curve_png": str(png)}
    for acc_key in ("pruned_test_acc", "finetuned_test_acc"):
        best = sparsest_within(points, acc_key, x_key, max_loss)
        summary[f"best_{acc_key}"] = (
            None
            if best is None
            else {"name": best["name"], x_key: best[x_key], acc_key: best[acc_key]}
        )
        if best is not None:
            print(f"sparsest within {max_loss} pt ({acc_key}): {best['name']} "
                  f"{x_key} {best[x_key]:.1f} %, acc {best[acc_key]:.2f} (dense {dense:.2f})")  # fmt: skip
    summary["wandb_dir"] = str(log_to_wandb(png, rows, out, title))
    (out / "curve.json").write_text(json.dumps(summary, indent=2))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+", help="multirun folders (searched for result.json)")
    parser.add_argument("--out", default=None, help="default: the first folder")
    parser.add_argument("--headline", choices=sorted(HEADLINES), default=None)
    parser.add_argument("--max-loss", type=float, default=0.5)
    args = parser.parse_args()
    out = Path(args.out or args.folders[0])
    collect(args.folders, out, args.headline, args.max_loss, title=out.name)


if __name__ == "__main__":
    main()
