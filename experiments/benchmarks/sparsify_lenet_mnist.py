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
4. With ``--seeds``, repeat step 3 (entropic at the chosen ρ, ε_E and the baselines at its
   widths) for every seed: the seed sets the calibration subset, the random selector and the
   fine-tune's data order. Print mean ± std over seeds.
5. Print markdown tables, save ``results.json`` and ``curve.png`` under ``--out`` and log the
   curve with its table to an offline W&B run.
"""

import argparse
import itertools
import json
import os
import re
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate

from experiments.benchmarks.sparsity_curve import log_to_wandb, table_rows
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


def magnitude_baseline(args, param_sparsity: float, seed: int | None = None) -> dict:
    """Global unstructured L1 magnitude at the same % params, fine-tuned with its masks."""
    name = "global_magnitude_unstructured" + ("" if seed is None else f"_seed{seed}")
    cached = Path(args.out) / name / "result.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    module, _run_config = module_from_checkpoint(args.dense_ckpt)
    seeded = [] if seed is None else [f"seed={seed}"]
    cfg = compose_run_config(
        "sparsify", [f"experiment={args.experiment}", f"torch_threads={args.threads}", *seeded],
        Path(args.out) / name,
    )  # fmt: skip
    L.seed_everything(cfg.seed)
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
    result = {
        "name": name,
        "param_sparsity": 100.0 * zeros / n_dense,
        "pruned_test_acc": 100.0 * before,
        "finetuned_test_acc": 100.0 * after,
    }
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(result))
    return result


def equal_budget(args, rho, eps, seed: int | None) -> list[dict]:
    """Entropic at (ρ, ε_E), then every baseline at its per-layer widths / % params."""
    suffix, seeded = ("", []) if seed is None else (f"_seed{seed}", [f"seed={seed}"])
    tag = f"rho{rho}_eps{eps}"
    chosen = run_point(
        args,
        f"entropic_chosen_{tag}{suffix}",
        [f"prune.rho={rho}", f"prune.eps_entropy={eps}", *seeded],
    )
    widths = Path(args.out) / f"widths_{tag}{suffix}.json"
    widths.write_text(json.dumps({lay["producer"]: lay["n_kept"] for lay in chosen["layers"]}))
    baselines = [
        run_point(
            args,
            f"{sel}_widths_of_{tag}{suffix}",
            [f"prune.selector={sel}", f"widths_from={widths}", *seeded],
        )
        for sel in ("l1_norm", "random", "group_lasso")
    ]
    baselines.append(magnitude_baseline(args, chosen["param_sparsity"], seed))
    return [chosen, *baselines]


def seeds_table(runs_per_seed: list[list[dict]], dense_acc: float) -> str:
    """Mean ± std over seeds of each selector's accuracy before / after fine-tuning."""
    lines = ["| selector | seeds | params % | acc before FT | acc after FT | Δ after FT |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for i in range(len(runs_per_seed[0])):
        rows = [runs[i] for runs in runs_per_seed]
        stats = {}
        for key in ("param_sparsity", "pruned_test_acc", "finetuned_test_acc"):
            vals = torch.tensor([r[key] for r in rows], dtype=torch.float64)
            std = float(vals.std()) if len(rows) > 1 else 0.0
            stats[key] = (float(vals.mean()), std)
        name = re.sub(r"_seed\d+$", "", rows[0]["name"]).split("_widths_of")[0].split("_rho")[0]
        (sp, _), (b, bs), (a, as_) = stats.values()
        lines.append(f"| {name} | {len(rows)} | {sp:.1f} | {b:.2f} ± {bs:.2f} | {a:.2f} ± {as_:.2f} "
                     f"| {a - dense_acc:+.2f} |")  # fmt: skip
    return "\n".join(lines)


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
    parser.add_argument(
        "--seeds", default="", help="extra seeds for the equal-budget runs, e.g. 1,2"
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
    rho, eps = best["prune"]["rho"], best["prune"]["eps_entropy"]
    print(f"chosen: rho={rho} eps={eps} by {key}")
    chosen, *baselines = equal_budget(args, rho, eps, None)
    per_seed = [equal_budget(args, rho, eps, int(s)) for s in args.seeds.split(",") if s]
    print(f"\ndense test accuracy {dense_acc:.2f} %\n")
    print("### Sweep (entropic, automatic mode)\n")
    print(table(sweep, dense_acc))
    print("\n### Equal budget\n")
    print(table([chosen, *baselines], dense_acc))
    if per_seed:
        print(f"\n### Equal budget over seeds (config seed + {args.seeds})\n")
        print(seeds_table([[chosen, *baselines], *per_seed], dense_acc))
    curves = {
        "entropic, no FT": ([p["param_sparsity"] for p in sweep],
                            [p["pruned_test_acc"] for p in sweep]),
        "entropic, FT": ([p["param_sparsity"] for p in sweep],
                         [p.get("finetuned_test_acc", p["pruned_test_acc"]) for p in sweep]),
    }  # fmt: skip
    png = sparsity_accuracy_curve(curves, dense_acc, Path(args.out) / "curve.png", args.experiment)
    log_to_wandb(png, table_rows(sweep), Path(args.out), args.experiment)
    slim = [{k: v for k, v in r.items() if k not in ("layers", "calibration_indices")}
            for r in [*sweep, chosen, *baselines, *itertools.chain(*per_seed)]]  # fmt: skip
    (Path(args.out) / "results.json").write_text(json.dumps(slim, indent=2))


if __name__ == "__main__":
    main()
