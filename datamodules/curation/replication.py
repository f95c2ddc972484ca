"""The small-scale replication set-up of LVD-142M curation, with planted ground truth.

Uncurated pool (row order): MNIST and Fashion-MNIST training images, then ``planted`` images
(exact duplicates of pool images, augmented duplicates: shift, crop, brightness; copies of
Fashion-MNIST *test* images), then uniform noise. Evaluation set: a Fashion-MNIST test subset
holding every copied test image. Query set: Fashion-MNIST training images outside the pool.

The planted items are recorded in ``ground_truth.npz`` (pool rows), so the pipeline is scored:
self-dedup recall/precision on planted duplicates, and planted test copies left after relative
dedup (must be 0).
"""

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from datamodules.components.image_tensors import load_image_tensors
from datamodules.curation.errors import CurationError
from datamodules.curation.manifest import Manifest, write_manifest

MNIST = {"kind": "torchvision", "dataset": "mnist", "train": True}
FASHION = {"kind": "torchvision", "dataset": "fashion_mnist", "train": True}
FASHION_TEST = {"kind": "torchvision", "dataset": "fashion_mnist", "train": False}


@dataclass(frozen=True)
class ReplicationConfig:
    """Sizes of the replication set-up (numbers of images)."""

    mnist: int = 2000
    fashion_mnist: int = 2000
    exact_duplicates: int = 100
    augmented_duplicates: int = 100
    test_copies: int = 50
    noise: int = 100
    queries: int = 500
    eval: int = 1000
    max_shift: int = 2
    seed: int = 0


def augment_copy(image: torch.Tensor, g: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """uint8 ``(C, H, W)`` → a near-duplicate: shift ≤ ``max_shift`` px, crop ≥ 85 %, brightness ±20 %."""
    _, h, w = image.shape
    x = image.float()[None]
    dx, dy = torch.randint(-max_shift, max_shift + 1, (2,), generator=g).tolist()
    x = torch.roll(F.pad(x, (max_shift,) * 4), shifts=(dy, dx), dims=(2, 3))
    x = x[..., max_shift : max_shift + h, max_shift : max_shift + w]
    side = round(h * (0.85 + 0.15 * torch.rand((), generator=g).item()) ** 0.5)
    top, left = torch.randint(0, h - side + 1, (2,), generator=g).tolist()
    x = F.interpolate(x[..., top : top + side, left : left + side], (h, w), mode="bilinear")
    x = x * (0.8 + 0.4 * torch.rand((), generator=g).item())
    return x[0].round().clamp(0, 255).to(torch.uint8)


def _choice(rng: np.random.Generator, n: int, size: int, what: str) -> np.ndarray:
    if size > n:
        raise CurationError(f"replication: {size} {what} requested, only {n} available")
    return rng.choice(n, size=size, replace=False)


def build_replication(
    out_dir: str | Path, data_dir: str | Path, cfg: ReplicationConfig = ReplicationConfig()
) -> dict[str, Any]:
    """Write ``pool.csv``, ``eval.csv``, ``queries.csv``, ``planted.npy`` and ``ground_truth.npz``."""
    out_dir, rng = Path(out_dir), np.random.default_rng(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    mnist, mnist_y = load_image_tensors("mnist", data_dir, train=True)
    fashion, fashion_y = load_image_tensors("fashion_mnist", data_dir, train=True)
    test, test_y = load_image_tensors("fashion_mnist", data_dir, train=False)
    m_idx = np.sort(_choice(rng, len(mnist), cfg.mnist, "MNIST images"))
    f_perm = _choice(rng, len(fashion), cfg.fashion_mnist + cfg.queries, "Fashion-MNIST images")
    f_idx, q_idx = np.sort(f_perm[: cfg.fashion_mnist]), np.sort(f_perm[cfg.fashion_mnist :])
    e_idx = np.sort(_choice(rng, len(test), cfg.eval, "Fashion-MNIST test images"))
    natural = [(mnist, mnist_y, i) for i in m_idx] + [(fashion, fashion_y, i) for i in f_idx]
    n_dup = cfg.exact_duplicates + cfg.augmented_duplicates
    originals = _choice(rng, len(natural), n_dup, "duplicated images")
    copied = np.sort(_choice(rng, cfg.eval, cfg.test_copies, "test copies"))
    planted, labels = [], []
    for j, row in enumerate(originals):
        images, y, i = natural[row]
        image = images[i] if j < cfg.exact_duplicates else augment_copy(images[i], g, cfg.max_shift)
        planted.append(image)
        labels.append(int(y[i]))
    for i in e_idx[copied]:
        planted.append(test[i])
        labels.append(int(test_y[i]))
    np.save(out_dir / "planted.npy", torch.stack(planted).numpy())
    np.save(out_dir / "planted_labels.npy", np.array(labels, dtype=np.int64))
    n_nat = len(natural)
    sources = {
        "mnist": MNIST,
        "fashion_mnist": FASHION,
        "planted": {"kind": "npy", "path": str(out_dir / "planted.npy"),
                    "labels": str(out_dir / "planted_labels.npy")},
        "noise": {"kind": "noise", "count": cfg.noise, "shape": [1, 28, 28], "seed": cfg.seed},
    }  # fmt: skip
    parts = [("mnist", m_idx), ("fashion_mnist", f_idx),
             ("planted", np.arange(len(planted))), ("noise", np.arange(cfg.noise))]  # fmt: skip
    pool = Manifest(
        sources,
        np.concatenate([np.full(len(i), s, dtype=object) for s, i in parts]),
        np.concatenate([i for _, i in parts]),
        "pool",
    )
    write_manifest(out_dir / "pool.csv", pool)
    write_manifest(out_dir / "eval.csv", Manifest(
        {"fashion_mnist_test": FASHION_TEST}, ["fashion_mnist_test"] * len(e_idx), e_idx, "eval"
    ))  # fmt: skip
    write_manifest(out_dir / "queries.csv", Manifest(
        {"fashion_mnist": FASHION}, ["fashion_mnist"] * len(q_idx), q_idx, "query"
    ))  # fmt: skip
    np.savez(
        out_dir / "ground_truth.npz",
        duplicate_rows=n_nat + np.arange(n_dup),
        original_rows=originals.astype(np.int64),
        augmented=np.arange(n_dup) >= cfg.exact_duplicates,
        test_copy_rows=n_nat + n_dup + np.arange(cfg.test_copies),
        test_copy_of=e_idx[copied],
        noise_rows=n_nat + len(planted) + np.arange(cfg.noise),
    )
    return {"pool": len(pool), "eval": len(e_idx), "queries": len(q_idx), **asdict(cfg)}


def load_ground_truth(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path) as gt:
        return {k: gt[k] for k in gt.files}


def source_groups(
    gt: dict[str, np.ndarray], n_pool: int, eval_index: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The source image of every pool row ``(n_pool,)`` and evaluation row ``(len(eval_index),)``,
    one id space: a planted duplicate shares its original's id, a planted test copy its test
    image's; every other image has its own. The null of the threshold calibration is pairs of
    distinct ids (``datamodules/curation/calibration.py``).

    ``eval_index``: the evaluation manifest's dataset indices (``eval.csv``), holding every
    ``gt["test_copy_of"]``.
    """
    eval_index = np.asarray(eval_index)
    pool = np.arange(n_pool, dtype=np.int64)
    pool[gt["duplicate_rows"]] = pool[gt["original_rows"]]
    position = {int(k): p for p, k in enumerate(eval_index)}
    missing = [int(k) for k in gt["test_copy_of"] if int(k) not in position]
    if missing:
        raise CurationError(f"test images {missing[:5]} copied into the pool are not in eval.csv")
    pool[gt["test_copy_rows"]] = n_pool + np.array(
        [position[int(k)] for k in gt["test_copy_of"]], dtype=np.int64
    )
    return pool, n_pool + np.arange(len(eval_index), dtype=np.int64)


def self_dedup_scores(
    components: np.ndarray, keep: np.ndarray, duplicate_rows: np.ndarray, original_rows: np.ndarray
) -> dict[str, float]:
    """Self-dedup on planted duplicates (all arrays indexed by pool row).

    recall: planted duplicates in the component of their original. precision: share of the
    removed images that are planted duplicates (natural near-duplicates count as false).
    """
    recall = float(np.mean(components[duplicate_rows] == components[original_rows]))
    removed = ~keep
    planted = np.zeros(len(keep), dtype=bool)
    planted[duplicate_rows] = True
    n_removed = int(removed.sum())
    precision = float((removed & planted).sum() / n_removed) if n_removed else 1.0
    return {
        "dedup/recall": recall,
        "dedup/precision": precision,
        "dedup/false_removals": float((removed & ~planted).sum()),
    }


def set_composition(manifest: Manifest, labels: np.ndarray, classes: int = 10) -> dict[str, Any]:
    """What a set of replication images holds: images per source, and the Fashion-MNIST class
    histogram ``(classes,)`` of its natural Fashion-MNIST rows (train or test split).

    ``labels (N,)`` are the rows' labels (e.g. ``ManifestImageSource.label``). Planted rows are
    left out of the histogram: their labels may be MNIST digits.
    """
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(manifest):
        raise CurationError(f"{len(labels)} labels for a set of {len(manifest)} images")
    fashion = [n for n, spec in manifest.sources.items()
               if spec.get("kind") == "torchvision" and spec.get("dataset") == "fashion_mnist"]  # fmt: skip
    rows = np.isin(manifest.source, fashion)
    names, counts = np.unique(manifest.source.astype(str), return_counts=True)
    return {
        "sources": dict(zip(names.tolist(), counts.tolist(), strict=True)),
        "fashion_classes": np.bincount(labels[rows], minlength=classes),
    }


def count_test_copies_left(kept_rows: np.ndarray, test_copy_rows: np.ndarray) -> int:
    """How many planted copies of evaluation images survive (must be 0)."""
    return int(np.isin(test_copy_rows, kept_rows).sum())
