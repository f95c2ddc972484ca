"""Similarity thresholds calibrated for a backbone from planted pairs (issue 5, item 3).

The paper's 0.6 / 0.45 were tuned for its copy-detection embeddings; other backbones (pixels, a
small or random ViT) put random pairs far higher. On a held-out calibration set (never the
evaluation set), a threshold sits halfway between a high quantile of random-pair cosines (what
must stay apart) and a low quantile of planted-pair cosines (what must be merged), or at the
random-pair quantile itself where the two overlap.

The random pairs are the null: pairs of *distinct source images*. The calibration set-up is built
by the code, so it knows which rows are copies of one image (a planted duplicate and its
original, a planted test copy and its test image) and passes them as ``groups``; pairs within a
group are never drawn. Without that, the null holds the planted pairs themselves (2,000,000 random
pairs of a 4,350-image pool with 200 planted pairs drew 35 of them, 23 at cosine 1), and the
``1 - d / N`` quantile (the ~23rd largest cosine there) lands on them: the threshold then bounds
nothing but the planted copies. Excluding the groups uses only what the construction put in;
natural near-duplicates of the datasets (unknown to anyone) stay in the null, as they should.
"""

import numpy as np

from datamodules.curation.errors import CurationError


def pair_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of L2-normalised ``a (P, D)`` and ``b (P, D)`` → ``(P,)``."""
    return np.einsum("pd,pd->p", np.asarray(a, np.float32), np.asarray(b, np.float32))


def _draw_pairs(
    n_a: int, n_b: int | None, n_pairs: int, rng: np.random.Generator,
    groups_a: np.ndarray | None, groups_b: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Indices ``(i, j)`` of ``n_pairs`` pairs; ``n_b`` None: pairs of distinct rows of one set.
    Pairs whose rows share a group are redrawn until none is left."""
    i, j = np.empty(n_pairs, np.int64), np.empty(n_pairs, np.int64)
    todo = np.arange(n_pairs)
    for _ in range(1000):
        i[todo] = rng.integers(0, n_a, len(todo))
        if n_b is None:
            j[todo] = (i[todo] + rng.integers(1, n_a, len(todo))) % n_a  # never i itself
        else:
            j[todo] = rng.integers(0, n_b, len(todo))
        if groups_a is None:
            return i, j
        todo = todo[groups_a[i[todo]] == groups_b[j[todo]]]
        if len(todo) == 0:
            return i, j
    raise CurationError("random pairs: nearly every pair shares a source-image group")


def _groups(groups: np.ndarray | None, n: int, what: str) -> np.ndarray | None:
    if groups is None:
        return None
    groups = np.asarray(groups).reshape(-1)
    if len(groups) != n:
        raise CurationError(f"{len(groups)} source-image groups for {n} {what} rows")
    return groups


def random_pair_cosines(
    x: np.ndarray, n_pairs: int, seed: int = 0, groups: np.ndarray | None = None
) -> np.ndarray:
    """Cosines ``(n_pairs,)`` of random pairs of distinct rows of ``x (N, D)``.

    ``groups (N,)``: the source image of each row (copies of one image share it); pairs within
    a group are never drawn, so the cosines are a null of distinct images (module docstring).
    """
    if len(x) < 2:
        raise CurationError(f"random pairs need at least 2 rows, got {len(x)}")
    g = _groups(groups, len(x), "pool")
    i, j = _draw_pairs(len(x), None, n_pairs, np.random.default_rng(seed), g, g)
    return pair_cosines(x[i], x[j])


def random_cross_pair_cosines(
    x: np.ndarray, e: np.ndarray, n_pairs: int, seed: int = 0,
    x_groups: np.ndarray | None = None, e_groups: np.ndarray | None = None,
) -> np.ndarray:  # fmt: skip
    """Cosines ``(n_pairs,)`` of random pairs (row of ``x (N, D)``, row of ``e (M, D)``), e.g.
    pool against evaluation images; with ``x_groups (N,)`` and ``e_groups (M,)`` (one id space),
    a pool copy of an evaluation image is never paired with that image."""
    if len(x) == 0 or len(e) == 0:
        raise CurationError("random cross pairs need rows on both sides")
    if (x_groups is None) != (e_groups is None):
        raise CurationError("give source-image groups for both sides or for neither")
    gx, ge = _groups(x_groups, len(x), "pool"), _groups(e_groups, len(e), "evaluation")
    i, j = _draw_pairs(len(x), len(e), n_pairs, np.random.default_rng(seed), gx, ge)
    return pair_cosines(x[i], e[j])


def calibrate_threshold(
    planted: np.ndarray, random: np.ndarray, random_q: float, planted_q: float = 0.01
) -> float:
    """A cosine threshold from planted-pair (must merge) and random-pair (must not) cosines.

    Halfway between the ``random_q`` quantile of ``random`` and the ``planted_q`` quantile of
    ``planted`` when the first lies below the second; else the ``random_q`` quantile itself:
    bounding false edges comes first, since above ~1 false edge per image the k-NN graph
    percolates into one giant component. Pick ``random_q = 1 - d / n`` for at most ``d`` false
    edges per image against ``n`` candidates (the pool, or the evaluation set). ``random`` must
    be pairs of distinct source images (``random_pair_cosines`` with ``groups``).
    """
    hi_random = float(np.quantile(random, random_q))
    lo_planted = float(np.quantile(planted, planted_q))
    return (hi_random + lo_planted) / 2 if lo_planted > hi_random else hi_random
