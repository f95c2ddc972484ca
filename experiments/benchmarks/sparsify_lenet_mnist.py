"""Entropic sparsification of LeNet-5 on MNIST: the sparsity-accuracy curve and baselines.

    python experiments/benchmarks/sparsify_lenet_mnist.py --experiment sparsify_lenet5_mnist \
        --dense-ckpt logs/train/lenet5_mnist/<run>/checkpoints/best-*.ckpt

1. Sweep the entropic solver over (ρ, ε_E) in automatic mode, each point pruned from the same
   dense checkpoint with the same 2048 calibration images, tested before and after the same
   short fine-tune (spec §2.9), via ``experiments/sparsify.py``.
2. Pick the sparsest point within 0.5 pt of the dense accuracy (before fine-tuning).
3. At that point's per-layer widths, run the L1-norm, random and group-LASSO selectors (same
   pipeline, same refit, same fine-tune), and global unstructured magnitude pruning at the same
   % parameters (masks only: no speed-up).
4. Print markdown tables and save ``results.json`` and ``curve.png`` under ``--out``.
"""

import argparse
import itertools
import json
import os
from pathlib import Path

import lightning as L
from hydra.utils import instantiate

from experiments.checkpoints import module_from_checkpoint
from experiments.compose import compose_run_config
from experiments.plots import sparsity_accuracy_curve
from experiments.sparsify import sparsify
from lightning_modules.components.sparse.baselines import (
    global_magnitude_prune,
    make_magnitude_pruning_permanent,
)
from lightning_modules.components.sparse.counting import count_params

MAX_LOSS = 0.5  # accuracy points


def run_point(args, name: str, overrides: list[str]) -> dict:
    """One ``sparsify`` run; a finished point (its result.json exists) is read back, not rerun."""
    out = Path(args.out) / name
    if (out / "result.json").is_file():
        return {**json.loads((out / "result.json").read_text()), "name": name}
    cfg = compose_run_config(
        "sparsify",
        [f"experiment={args.experiment}", f"source_ckpt={args.dense_ckpt}",
         f"finetune.epochs={args.finetune_epochs}", f"torch_threads={args.threads}", *overrides],
        out,
    )  # fmt: skip
    result = sparsify(cfg)
    result["name"] = name
    return result


def magnitude_baseline(args, param_sparsity: float) -> dict:
    """Global unstructured L1 magnitude at the same % params, fine-tuned with its masks."""
    module, _run_config = module_from_checkpoint(args.dense_ckpt)
    cfg = compose_run_config(
        "sparsify", [f"experiment={args.experiment}", f"torch_threads={args.threads}"],
        Path(args.out) / "magnitude",
    )  # fmt: skip
    datamodule = instantiate(cfg.data)
    n_dense = count_params(module.net)
    global_magnitude_prune(module.net, param_sparsity / 100.0)
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    before = trainer.test(module, datamodule=datamodule, verbose=False)[0]["test/acc"]
    module.optimizer_factory = instantiate(cfg.finetune.optimizer)
    ft = instantiate(cfg.trainer, max_epochs=args.finetune_epochs, logger=False,
                     enable_checkpointing=False)  # fmt: skip
    if args.finetune_epochs:
        ft.fit(module, datamodule=datamodule)
    make_magnitude_pruning_permanent(module.net)
    after = trainer.test(module, datamodule=datamodule, verbose=False)[0]["test/acc"]
    zeros = sum(int((p == 0).sum()) for p in module.net.parameters())
    return {
        "name": "global_magnitude_unstructured",
        "param_sparsity": 100.0 * zeros / n_dense,
        "pruned_test_acc": 100.0 * before,
        "finetuned_test_acc": 100.0 * after,
    }


def pick_point(points: list[dict], dense_acc: float, key: str) -> dict:
    """The sparsest point whose ``key`` accuracy is within MAX_LOSS of the dense one."""
    ok = [p for p in points if dense_acc - p[key] <= MAX_LOSS]
    if not ok:
        raise SystemExit(f"no sweep point within {MAX_LOSS} pt of the dense accuracy")
    return max(ok, key=lambda p: p["param_sparsity"])


def table(rows: list[dict], dense_acc: float) -> str:
    head = ("| run | params removed % | channels % | FLOPs % | acc before FT | Δ | acc after FT "
            "| Δ | speed-up b1 | speed-up b256 |")  # fmt: skip
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        before, after = r["pruned_test_acc"], r.get("finetuned_test_acc", float("nan"))
        lines.append(
            f"| {r['name']} | {r['param_sparsity']:.1f} | {r.get('channel_sparsity', 0):.1f} "
            f"| {r.get('flop_sparsity', 0):.1f} | {before:.2f} | {before - dense_acc:+.2f} "
            f"| {after:.2f} | {after - dense_acc:+.2f} | {r.get('speedup_b1', float('nan')):.2f} "
            f"| {r.get('speedup_b256', float('nan')):.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--experiment", default="sparsify_lenet5_mnist")
    parser.add_argument("--dense-ckpt", required=True)
    parser.add_argument("--rho", default="0.1,0.3,1,3,10")
    parser.add_argument("--eps", default="1e-3")
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--criterion",
        choices=("finetuned", "pruned"),
        default="finetuned",
        help="pick the baseline budget by accuracy after (default) or before fine-tuning",
    )
    parser.add_argument("--out", default="logs/benchmarks/sparsify")
    args = parser.parse_args()
    os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[2]))
    L.seed_everything(0)
    grid = itertools.product(args.rho.split(","), args.eps.split(","))
    sweep = [
        run_point(
            args,
            f"entropic_rho{r}_eps{e}",
            [f"prune.rho={r}", f"prune.eps_entropy={e}", "report.latency=false"],
        )
        for r, e in grid
    ]
    dense_acc = sweep[0]["dense_test_acc"]
    key = (
        "finetuned_test_acc"
        if args.finetune_epochs and args.criterion == "finetuned"
        else "pruned_test_acc"
    )
    best = pick_point(sweep, dense_acc, key)
    tag = f"rho{best['prune']['rho']}_eps{best['prune']['eps_entropy']}"
    widths = Path(args.out) / f"widths_{tag}.json"
    widths.write_text(json.dumps({lay["producer"]: lay["n_kept"] for lay in best["layers"]}))
    print(f"chosen: rho={best['prune']['rho']} eps={best['prune']['eps_entropy']} by {key}")
    chosen = run_point(
        args,
        f"entropic_chosen_{tag}",
        [f"prune.rho={best['prune']['rho']}", f"prune.eps_entropy={best['prune']['eps_entropy']}"],
    )
    baselines = [
        run_point(
            args, f"{sel}_widths_of_{tag}", [f"prune.selector={sel}", f"widths_from={widths}"]
        )
        for sel in ("l1_norm", "random", "group_lasso")
    ]
    baselines.append(magnitude_baseline(args, chosen["param_sparsity"]))
    print(f"\ndense test accuracy {dense_acc:.2f} %\n")
    print("### Sweep (entropic, automatic mode)\n")
    print(table(sweep, dense_acc))
    print("\n### Equal budget\n")
    print(table([chosen, *baselines], dense_acc))
    curves = {
        "entropic, no FT": ([p["param_sparsity"] for p in sweep],
                            [p["pruned_test_acc"] for p in sweep]),
        "entropic, FT": ([p["param_sparsity"] for p in sweep],
                         [p.get("finetuned_test_acc", p["pruned_test_acc"]) for p in sweep]),
    }  # fmt: skip
    sparsity_accuracy_curve(curves, dense_acc, Path(args.out) / "curve.png", args.experiment)
    slim = [{k: v for k, v in r.items() if k not in ("layers", "calibration_indices")}
            for r in [*sweep, chosen, *baselines]]  # fmt: skip
    (Path(args.out) / "results.json").write_text(json.dumps(slim, indent=2))


if __name__ == "__main__":
    main()
