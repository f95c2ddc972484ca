"""Small-scale replication of LVD-142M curation with planted ground truth (issue 5, item 3).

    python experiments/benchmarks/curation_replication.py                    # everything
    python experiments/benchmarks/curation_replication.py --train-steps 0    # (a), (b) only
    python experiments/benchmarks/curation_replication.py --work logs/benchmarks/curation_dinov2 \
        --train-steps 0 curation.ckpt_path=PATH.ckpt curation.embed.image_size=32  # trained embedder

Pool: MNIST + Fashion-MNIST train images, planted exact and augmented duplicates, planted copies
of Fashion-MNIST *test* images, noise; queries: other Fashion-MNIST train images
(``datamodules/curation/replication.py``). Embeddings: ``curation/backbone`` (default: pixels).

1. Calibration on a held-out set-up (seed ``--calibration-seed``: other images, other planted
   pairs; the evaluation set-up is never looked at): cosines of its planted pairs against
   random pairs of distinct source images (its ground truth names the planted copies, which
   are left out of this null) give the thresholds (``datamodules/curation/calibration.py``),
   each bounding the false edges per image to ``--false-degree`` (0.05) against the pool (self-dedup) or the
   evaluation set (relative dedup, never above the self-dedup threshold, as the paper's
   0.45 < 0.6: a missed test copy is worse than a dropped pool image).
2. The evaluation set-up (seed ``--seed``) curated with them (``experiments/curate.py``):
   (a) self-dedup precision / recall on its planted duplicates, (b) planted test copies left;
   then what the curated set and the random draws hold (images per source, Fashion-MNIST
   classes; ``curation_retrieval_modes.py`` does the same for other retrieval settings).
3. (c) DINOv2 (``experiment=dinov2_tiny_fashionmnist``) trained ``--train-steps`` steps on the
   curated manifest and, with the same budget, on as many random pool images, both through
   ``CuratedDataModule``; the teacher's kNN top-1 (k = 20, bank: 10k Fashion-MNIST train
   images) on the Fashion-MNIST test set, per ``--train-seeds`` seed. Every run's config is
   composed before the first run starts (saved as ``composed_config.yaml``; the commit of
   ``configs/`` is printed), so a preset edited meanwhile cannot mix into the comparison.
   Rerunning the command resumes: curation stages that finished are skipped, and so is every
   training run whose saved config equals the new one and whose CSV log holds its final kNN.
   The last row: the mean of the paired gaps, their sd and 95 % t-interval.
"""

import argparse
import csv
import os
import subprocess
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict
from scipy import stats

from datamodules.curated_datamodule import ManifestImageSource
from datamodules.curation.calibration import (
    calibrate_threshold,
    pair_cosines,
    random_cross_pair_cosines,
    random_pair_cosines,
)
from datamodules.curation.embed import Embeddings, load_embeddings
from datamodules.curation.manifest import read_manifest, write_manifest
from datamodules.curation.replication import load_ground_truth, set_composition, source_groups
from experiments.compose import compose_run_config
from experiments.curate import curate
from experiments.train import train

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[2]))


def _positions(emb: Embeddings, rows: np.ndarray) -> np.ndarray:
    """Embedding positions of manifest ``rows`` (-1: not embedded, e.g. unreadable)."""
    position = np.full(max(int(emb.rows.max()), int(rows.max(initial=0))) + 1, -1)
    position[emb.rows] = np.arange(len(emb.rows))
    return position[rows]


def planted_cosines(
    work: Path, n_pairs: int, exclude_planted: bool = True
) -> dict[str, np.ndarray]:
    """Cosines of a curated set-up's planted pairs and of ``n_pairs`` random pairs, by kind.

    The random pairs are pairs of distinct source images: the set-up's own ground truth says
    which rows are copies of one image (``source_groups``), and those pairs are not drawn
    (``exclude_planted=False``: the old null, which held the planted pairs; for comparison).
    """
    pool = load_embeddings(work / "embed_pool")
    ev = load_embeddings(work / "embed_eval_fashion_mnist_test")
    gt = load_ground_truth(work / "replication" / "ground_truth.npz")
    x, e = np.asarray(pool.vectors), np.asarray(ev.vectors)
    dup, orig = _positions(pool, gt["duplicate_rows"]), _positions(pool, gt["original_rows"])
    eval_index = read_manifest(work / "replication" / "eval.csv").index
    copy_of = _positions(ev, np.searchsorted(eval_index, gt["test_copy_of"]))
    copy = _positions(pool, gt["test_copy_rows"])
    n_pool = len(read_manifest(work / "replication" / "pool.csv"))
    pool_groups, eval_groups = source_groups(gt, n_pool, eval_index)
    groups = {"groups": pool_groups[pool.rows]} if exclude_planted else {}
    cross = ({"x_groups": pool_groups[pool.rows], "e_groups": eval_groups[ev.rows]}
             if exclude_planted else {})  # fmt: skip
    return {
        "exact duplicates": pair_cosines(x[dup[~gt["augmented"]]], x[orig[~gt["augmented"]]]),
        "augmented duplicates": pair_cosines(x[dup[gt["augmented"]]], x[orig[gt["augmented"]]]),
        "test copies": pair_cosines(x[copy], e[copy_of]),
        "random pool pairs": random_pair_cosines(x, n_pairs, seed=0, **groups),
        "random pool-eval pairs": random_cross_pair_cosines(x, e, n_pairs, seed=1, **cross),
    }


def calibrate(
    cos: dict[str, np.ndarray], pool: int, evals: int, degree: float
) -> tuple[float, float]:
    """Self- and relative-dedup thresholds from a calibration set-up's cosines: at most
    ``degree`` false edges per image against the ``pool`` (self) or the ``evals`` (relative)."""
    duplicates = np.concatenate([cos["exact duplicates"], cos["augmented duplicates"]])
    self_t = calibrate_threshold(duplicates, cos["random pool pairs"], 1 - degree / pool)
    relative_t = calibrate_threshold(
        np.concatenate([duplicates, cos["test copies"]]),
        cos["random pool-eval pairs"],
        1 - degree / evals,
    )
    return self_t, min(self_t, relative_t)


def run_curation(work: Path, seed: int, extra: list[str]) -> dict[str, float]:
    cfg = compose_run_config(
        "curate", [f"seed={seed}", f"work_dir={work}", "curation.search.threads=1", *extra], work
    )
    return curate(cfg)


def curated_data(data: DictConfig, manifest: Path) -> DictConfig:
    """The multi-crop preset's crops and masking, served from ``manifest`` by CuratedDataModule."""
    crops, m = OmegaConf.to_container(data.crops), data.masking
    grid = data.crops.global_size // data.patch_size
    return OmegaConf.create({
        "_target_": "datamodules.curated_datamodule.CuratedDataModule",
        "manifest_path": str(manifest), "data_dir": data.data_dir,
        "batch_size": data.batch_size, "num_workers": 0, "image_size": data.image_size,
        "channels": 3, "seed": data.seed,
        "transform": {"_target_": "datamodules.components.multicrop_transforms.MultiCropTransform",
                      **crops, "patch_size": data.patch_size},
        "collate_fn": {
            "_target_": "datamodules.components.multicrop_collate.MultiCropCollate",
            "mask_generator": {
                "_target_": "datamodules.components.masking.BlockMaskGenerator",
                "grid_size": grid, "min_num_patches": m.min_num_patches,
                "max_num_patches": m.max_patch_fraction * grid * grid, "min_aspect": m.min_aspect,
            },
            "mask_probability": m.probability, "mask_ratio_range": list(m.ratio_range),
            "seed": data.seed,
        },
    })  # fmt: skip


def train_config(manifest: Path, out: Path, seed: int, a) -> DictConfig:
    """The run config of ``a.train_steps`` DINOv2 steps on ``manifest`` (written to ``out``)."""
    overrides = [
        "experiment=dinov2_tiny_fashionmnist", f"trainer.max_steps={a.train_steps}",
        "torch_threads=1", f"seed={seed}", "callbacks.knn_eval.at_train_start=false",
        "callbacks.knn_eval.test_size=null", f"callbacks.knn_eval.train_size={a.knn_bank}",
        *a.train_overrides,
    ]  # fmt: skip
    cfg = compose_run_config("train", overrides, out, logger="csv")
    OmegaConf.resolve(cfg)  # the model and callbacks read the preset's data keys
    with open_dict(cfg):
        cfg.data = curated_data(cfg.data, manifest)
    return cfg


def finished_knn(out: Path, cfg: DictConfig) -> float | None:
    """The final teacher kNN top-1 (k = 20) of a run already finished in ``out`` with exactly
    ``cfg`` (its saved ``composed_config.yaml``), read from its CSV log; None when there is none.

    A rerun of the benchmark skips such runs, so a killed command loses at most the run it was in.
    """
    saved = out / "composed_config.yaml"
    if not saved.is_file() or OmegaConf.load(saved) != cfg:
        return None
    for metrics in sorted((out / "csv").glob("version_*/metrics.csv")):
        with metrics.open() as f:
            for row in csv.DictReader(f):
                knn = row.get("probe/knn_top1_k20")
                if knn and int(row["step"]) == cfg.trainer.max_steps:
                    return float(knn)
    return None


def paired_summary(gaps: list[float]) -> tuple[float, float, float, float]:
    """Mean, standard deviation (n - 1) and two-sided 95 % t-interval of paired gaps
    (sd and interval nan for one pair)."""
    g = np.asarray(gaps, dtype=float)
    mean = float(g.mean())
    if len(g) < 2:
        return mean, float("nan"), float("nan"), float("nan")
    sd = float(g.std(ddof=1))
    half = float(stats.t.ppf(0.975, len(g) - 1)) * sd / np.sqrt(len(g))
    return mean, sd, mean - half, mean + half


def config_commit() -> str:
    """The commit of ``configs/`` the runs are composed from, and whether it had local edits
    (the preset may change under a running benchmark: every run is composed before the first)."""

    def git(*args: str) -> str:
        root = Path(__file__).resolve().parents[2]
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True).stdout

    dirty = git("status", "--porcelain", "--", "configs").strip()
    return git("log", "-1", "--format=%h", "--", "configs").strip() + (
        f" + local edits: {' '.join(dirty.split())}" if dirty else " (clean)"
    )


def random_manifest(pool_csv: Path, size: int, out: Path, seed: int) -> Path:
    """``size`` uniformly drawn rows of the uncurated pool."""
    pool = read_manifest(pool_csv)
    rows = np.sort(np.random.default_rng(seed).choice(len(pool), size=size, replace=False))
    return write_manifest(out, pool.select(rows, "random"))


def composition_table(sets: dict[str, Path], data_dir: str) -> None:
    """Images per source and the Fashion-MNIST class histogram of each set (why curated wins or
    loses: a set that misses classes of the test set cannot teach them)."""
    rows = []
    for name, path in sets.items():
        images = ManifestImageSource(path, data_dir)
        c = set_composition(images.manifest, [images.label(i) for i in range(len(images))])
        h = c["fashion_classes"]
        rows.append([name, str(len(images.manifest)), ", ".join(f"{k} {v}" for k, v in
                     sorted(c["sources"].items())), " / ".join(map(str, h)),
                     f"{h.min() / max(h.sum(), 1) * len(h):.2f}"])  # fmt: skip
    _table(["set", "images", "per source", "Fashion-MNIST classes 0-9",
            "smallest class / uniform share"], rows)  # fmt: skip


def _table(header: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--work", type=Path, default=Path("logs/benchmarks/curation_replication"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--calibration-seed", type=int, default=1)
    p.add_argument("--train-steps", type=int, default=250)
    p.add_argument("--train-seeds", type=int, nargs="+", default=[0])
    p.add_argument("--knn-bank", type=int, default=10_000)
    p.add_argument("--random-pairs", type=int, default=2_000_000)
    p.add_argument("--false-degree", type=float, default=0.05, help="false edges per image")
    p.add_argument(
        "--keep-planted-in-null",
        action="store_true",
        help="old calibration: random pairs may be planted pairs (for comparison)",
    )
    p.add_argument("--train-override", action="append", default=[], dest="train_overrides",
                   help="a train.py override after the preset's (repeatable)")  # fmt: skip
    p.add_argument("overrides", nargs="*", help="curate.py overrides, e.g. curation/backbone=...")
    a = p.parse_args()
    cal = _calibration_run(a)
    cos = planted_cosines(cal, a.random_pairs, not a.keep_planted_in_null)
    quantiles = (0.01, 0.5, 0.99, 0.999, 0.99999)
    _table(["calibration pairs", "n", *(f"cos q{q:g}" for q in quantiles)],
           [[k, str(len(v)), *(f"{np.quantile(v, q):.4f}" for q in quantiles)]
            for k, v in cos.items()])  # fmt: skip
    sizes = {k: len(read_manifest(cal / "replication" / f"{k}.csv")) for k in ("pool", "eval")}
    self_t, rel_t = calibrate(cos, sizes["pool"], sizes["eval"], a.false_degree)
    thresholds = [f"curation.self_dedup.threshold={self_t:.4f}",
                  f"curation.relative_dedup.threshold={rel_t:.4f}"]  # fmt: skip
    print("calibrated:", " ".join(thresholds))
    m = run_curation(a.work / "evaluation", a.seed, [*a.overrides, *thresholds])
    rows = [[k, f"{m[k]:.4g}"] for k in (
        "pool/images", "dedup/precision", "dedup/recall", "dedup/recall_exact",
        "dedup/recall_augmented", "dedup/false_removals", "self_dedup/kept",
        "relative_dedup/test_copies_left", "relative_dedup/kept", "curated/images",
        "retrieval/fashion_share")]  # fmt: skip
    _table(["replication (evaluation set-up)", "value"], rows)
    evaluation = a.work / "evaluation"
    curated = evaluation / "manifest" / "curated.csv"
    size = len(read_manifest(curated))
    pool_csv = evaluation / "replication" / "pool.csv"
    uncurated = {seed: random_manifest(pool_csv, size, a.work / f"random_seed{seed}.csv", seed)
                 for seed in a.train_seeds}  # fmt: skip
    composition_table({
        "queries": evaluation / "replication" / "queries.csv",
        "evaluation set": evaluation / "replication" / "eval.csv",
        "curated": curated,
        **{f"random pool draw (seed {s})": path for s, path in uncurated.items()},
    }, os.environ.get("DATA_DIR", "data"))  # fmt: skip
    if a.train_steps <= 0:
        return
    # every run is composed now, so all of them use the same preset even if it is edited meanwhile
    configs = {(seed, name): train_config(path, a.work / f"train_{name}_seed{seed}", seed, a)
               for seed in a.train_seeds
               for name, path in (("curated", curated), ("uncurated", uncurated[seed]))}  # fmt: skip
    done = {key: finished_knn(Path(cfg.paths.output_dir), cfg) for key, cfg in configs.items()}
    for cfg in configs.values():
        Path(cfg.paths.output_dir).mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, Path(cfg.paths.output_dir) / "composed_config.yaml")
    print("training configs composed from configs/ at", config_commit())
    _table(["seed (paired)", f"curated kNN top-1 ({a.train_steps} steps, {size} images)",
            "uncurated kNN top-1", "curated − uncurated", "CPU s (cur. / unc.)"],
           _train_pairs(configs, done, a.train_seeds))  # fmt: skip


def _train_pairs(
    configs: dict[tuple[int, str], DictConfig], done: dict[tuple[int, str], float | None],
    seeds: list[int],
) -> list[list[str]]:  # fmt: skip
    """Train every run not ``done`` (seed by seed, curated first); the per-seed rows and a mean
    row with the paired gaps' sd and 95 % t-interval. Each result is printed as it comes."""
    rows, gaps, means = [], [], {"curated": [], "uncurated": []}
    for seed in seeds:  # the random pool draw and the training both follow the seed
        knn, cpu = [], []
        for name in ("curated", "uncurated"):
            start = time.process_time()  # this process's CPU seconds (data loading runs in it)
            previous = done[seed, name]
            knn.append(train(configs[seed, name])["probe/knn_top1_k20"]
                       if previous is None else previous)  # fmt: skip
            cpu.append("reused" if previous is not None else f"{time.process_time() - start:.0f}")
            means[name].append(knn[-1])
            print(f"seed {seed} {name}: kNN {knn[-1]:.4f}, {cpu[-1]} CPU s", flush=True)
        gaps.append(knn[0] - knn[1])
        rows.append([str(seed), *(f"{v:.4f}" for v in knn), f"{gaps[-1]:+.4f}", " / ".join(cpu)])
    mean, sd, lo, hi = paired_summary(gaps)
    rows.append(["mean", f"{np.mean(means['curated']):.4f}", f"{np.mean(means['uncurated']):.4f}",
                 f"{mean:+.4f} (sd {sd:.4f}; 95 % t-interval {lo:+.4f} to {hi:+.4f})", ""])  # fmt: skip
    return rows


def _calibration_run(a) -> Path:
    work = a.work / "calibration"
    run_curation(work, a.calibration_seed, list(a.overrides))
    return work


if __name__ == "__main__":
    main()
