"""Held-out-train kNN of the teacher in a Fashion-MNIST benchmark checkpoint (recipe selection).

Rebuilds the ``dinov2_tiny_fashionmnist`` model (with the run's model overrides), loads a
checkpoint of ``dinov2_fashionmnist_knn.py`` and scores its teacher backbone with that script's
``--val`` protocol: bank = the seeded ``--bank`` train images, queries = ``--val`` other train
images, weighted kNN of spec §9. Lets a full-budget run be compared on validation images after
the fact, without looking at the test split.

    python experiments/benchmarks/dinov2_fashionmnist_val_knn.py logs/.../last.ckpt --val 5000
"""

import argparse
import os
from pathlib import Path

import torch
from hydra.utils import instantiate

from experiments.benchmarks.dinov2_fashionmnist_knn import ROOT, HeldOutTrainKNN
from experiments.compose import compose_run_config
from lightning_modules.components.knn import KNN_KS


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpt", type=Path, help="a checkpoint written by dinov2_fashionmnist_knn.py")
    p.add_argument("--bank", type=int, default=10000, help="kNN bank: train images")
    p.add_argument("--val", type=int, default=5000, help="queries: held-out train images")
    p.add_argument("overrides", nargs="*", help="the run's model overrides (architecture)")
    a = p.parse_args(argv)
    os.environ.setdefault("PROJECT_ROOT", str(ROOT))
    cfg = compose_run_config(
        "train", ["experiment=dinov2_tiny_fashionmnist", *a.overrides], ROOT / "logs" / "tmp"
    )
    torch.set_num_threads(cfg.torch_threads)
    model = instantiate(cfg.model)
    state = torch.load(a.ckpt, map_location="cpu", weights_only=False)["state_dict"]
    model.load_state_dict(state)
    knn = HeldOutTrainKNN(
        dataset="fashion_mnist", data_dir=cfg.paths.data_dir, train_size=a.bank,
        val_size=a.val, test_size=0, every_n_epochs=None, seed=cfg.callbacks.knn_eval.seed,
    )  # fmt: skip
    backbone = model.eval_backbone.eval()
    accs = knn.evaluate(backbone)
    print(f"{a.ckpt}: teacher kNN top-1, bank {a.bank} train images, {a.val} held-out queries")
    print("  ".join(f"k={k} {100 * accs[f'probe/knn_top1_k{k}']:.2f}" for k in KNN_KS))


if __name__ == "__main__":
    main()
