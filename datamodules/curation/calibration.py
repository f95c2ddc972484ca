"""Similarity thresholds calibrated for a backbone from planted pairs (issue 5, item 3).

The paper's 0.6 / 0.45 were tuned for its copy-detection embeddings; other backbones (pixels, a
small or random ViT) put random pairs far higher. On a held-out calibration set (never the
evaluation set), a threshold sits halfway between a high quantile of random-pair cosines (what
must stay apart) and a low quantile of planted-pair cosines (what must be merged), or at the random-pair quantile itself where the two overlap.
"""

import numpy as np


def pair_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of L2-normalised ``a (P, D)`` and ``b (P, D)`` → ``(P,)``."""
    return np.einsum("pd,pd->p", np.asarray(a, np.float32), np.asarray(b, np.float32))


def random_pair_cosines(x: np.ndarray, n_pairs: int, seed: int = 0) -> np.ndarray:
    """Cosines ``(n_pairs,)`` of random pairs of distinct rows of ``x (N, D)``."""
    rng = np.random.default_rng(seed)
    i = rng.integers(0, len(x), n_pairs)
    j = (i + rng.integers(1, len(x), n_pairs)) % len(x)  # never i itself
    return pair_cosines(x[i], x[j])


def calibrate_threshold(
    planted: np.ndarray, random: np.ndarray, random_q: float, planted_q: float = 0.01
) -> float:
    """A cosine threshold from planted-pair (must merge) and random-pair (must not) cosines.

    Halfway between the ``random_q`` quantile of ``random`` and the ``planted_q`` quantile of
    ``planted`` when the first lies below the second; else the ``random_q`` quantile itself:
    bounding false edges comes first, since above ~1 false edge per image the k-NN graph
    percolates into one giant component. Pick ``random_q = 1 - d / n`` for at most ``d`` false
    edges per image against ``n`` candidates (the pool, or the evaluation set).
    """
    hi_random = float(np.quantile(random, random_q))
    lo_planted = float(np.quantile(planted, planted_q))
    return (hi_random + lo_planted) / 2 if lo_planted > hi_random else hi_random
