"""DINOv2 quality on Fashion-MNIST: teacher kNN top-1 after a fixed CPU budget (spec §9).

Trains the ``dinov2_tiny_fashionmnist`` preset for ``--steps`` optimizer steps (the CPU budget;
wall time is printed) and compares, on the Fashion-MNIST test split with the weighted kNN of
spec §9 (cosine, T = 0.07, k ∈ {10, 20, 100, 200}) and the same train-split bank:

- the teacher after training,
- the same network at initialisation (the teacher before the first step: the kNN callback runs
  at train start and at train end of the same run),
- raw pixels (mean-centred, flattened eval crops).

``--val N`` replaces the test queries by N held-out train images (disjoint from the bank), so
recipes can be compared without looking at the test split; report test numbers only for the
recipe chosen that way. CPU time (user + sys of this process and its data workers) is printed
beside wall time, since wall time depends on the machine's load.

    python experiments/benchmarks/dinov2_fashionmnist_knn.py --steps 600
    python experiments/benchmarks/dinov2_fashionmnist_knn.py --steps 400 --val 5000 KEY=VALUE
"""

import argparse
import csv
import os
import resource
import sys
import time
from pathlib import Path

from torch import nn

from callbacks.knn_eval import KNNEvalCallback
from datamodules.components.labelled_features import LabelledImages, build_labelled_splits
from experiments.compose import compose_run_config
from experiments.train import train
from lightning_modules.components.knn import KNN_KS, pixel_knn_top1

ROOT = Path(__file__).resolve().parents[2]
HELD_OUT_KNN = "experiments.benchmarks.dinov2_fashionmnist_knn.HeldOutTrainKNN"  # for Hydra


class HeldOutTrainKNN(KNNEvalCallback):
    """``KNNEvalCallback`` whose queries are the ``val`` split (held-out train images) instead of
    the test split: for choosing a recipe without tuning on the test set."""

    def splits(self, backbone: nn.Module) -> dict[str, LabelledImages]:
        data = super().splits(backbone)
        return {**data, "test": data["val"]}


def cpu_minutes() -> float:
    """User + system CPU minutes of this process and its finished children (data workers)."""
    own, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return (own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime) / 60


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1200, help="optimizer steps (the CPU budget)")
    p.add_argument("--bank", type=int, default=10000, help="kNN bank: train images (0: all)")
    p.add_argument("--queries", type=int, default=0, help="test images (0: all 10k)")
    p.add_argument(
        "--val", type=int, default=0, help="query N held-out train images instead of the test split"
    )
    p.add_argument("--out", type=Path, default=ROOT / "logs" / "benchmarks" / "dinov2_fmnist")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for the run")
    return p.parse_args(argv)


def knn_rows(csv_path: Path) -> dict[int, dict[int, float]]:
    """``{step: {k: top-1}}`` of the kNN callback's logged metrics."""
    rows: dict[int, dict[int, float]] = {}
    with csv_path.open() as f:
        for row in csv.DictReader(f):
            for k in KNN_KS:
                value = row.get(f"probe/knn_top1_k{k}")
                if value:
                    rows.setdefault(int(row["step"]), {})[k] = float(value)
    return rows


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    os.environ.setdefault("PROJECT_ROOT", str(ROOT))
    overrides = [
        "experiment=dinov2_tiny_fashionmnist", f"trainer.max_steps={a.steps}",
        f"callbacks.knn_eval.train_size={a.bank or 'null'}",
        f"callbacks.knn_eval.test_size={0 if a.val else a.queries or 'null'}",
        "+trainer.enable_progress_bar=false", *a.overrides,
    ]  # fmt: skip
    if a.val:
        overrides += [
            f"callbacks.knn_eval._target_={HELD_OUT_KNN}", f"+callbacks.knn_eval.val_size={a.val}",
        ]  # fmt: skip
    cfg = compose_run_config("train", overrides, a.out, logger="csv")
    start = time.perf_counter()
    train(cfg)
    minutes = (time.perf_counter() - start) / 60
    cpu = cpu_minutes()
    (metrics_csv,) = a.out.glob("csv/version_*/metrics.csv")
    knn = knn_rows(metrics_csv)
    first, last = min(knn), max(knn)
    kc = cfg.callbacks.knn_eval
    size = cfg.data.crops.global_size
    splits = build_labelled_splits(
        "fashion_mnist", cfg.paths.data_dir, size, kc.train_size, a.val, kc.test_size, seed=kc.seed
    )
    tr, te = splits["train"], splits["val" if a.val else "test"]
    queries = "held-out train" if a.val else "test"
    pixels = pixel_knn_top1(tr.images, tr.labels, te.images, te.labels)
    print(f"\nDINOv2 tiny on Fashion-MNIST: {a.steps} steps x batch {cfg.data.batch_size}, "
          f"{minutes:.1f} min wall, {cpu:.1f} min CPU (training + the two kNN evaluations), "
          f"torch threads {cfg.torch_threads}; bank {len(tr)} train images, {len(te)} {queries} "
          "queries")  # fmt: skip
    print(f"{'features':<34}" + "".join(f"{'k=' + str(k):>8}" for k in KNN_KS))
    table = [
        ("raw pixels (mean-centred)", pixels),
        (f"teacher at initialisation (step {first})", knn[first]),
        (f"teacher after training (step {last})", knn[last]),
    ]
    for name, row in table:
        print(f"{name:<34}" + "".join(f"{row[k]:>8.4f}" for k in KNN_KS))
    gain = 100 * (knn[last][20] - knn[first][20])
    print(f"k=20 gain over initialisation: {gain:+.1f} points")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
