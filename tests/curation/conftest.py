"""Shared settings and synthetic embeddings for the curation tests."""

from collections.abc import Callable, Iterator

import faiss
import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def single_thread() -> Iterator[None]:
    """One torch and one faiss thread: the arrays are tiny and the machine's 2 cores are shared."""
    previous_torch, previous_faiss = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(previous_torch)
    faiss.omp_set_num_threads(previous_faiss)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _pair_with_cosine(cos: float, dim: int = 8) -> np.ndarray:
    out = np.zeros((2, dim))
    out[0, 0] = 1.0
    out[1, 0], out[1, 1] = cos, np.sqrt(1 - cos**2)
    return out.astype(np.float32)


@pytest.fixture
def unit_rows() -> Callable[[np.ndarray], np.ndarray]:
    """``unit_rows(x)``: the rows of ``x`` L2-normalised, float32."""
    return _unit_rows


@pytest.fixture
def cosine_pair() -> Callable[..., np.ndarray]:
    """``cosine_pair(cos, dim=8)``: two unit vectors ``(2, dim)`` with cosine exactly ``cos``."""
    return _pair_with_cosine


@pytest.fixture
def planted() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1000 random unit vectors (dim 128) then 200 near-duplicates (cos ≈ 0.97) of some of them.

    Returns ``(embeddings (1200, 128), duplicate_rows (200,), original_rows (200,))``; random
    pairs have cosine ~ N(0, 1/128), so the 0.6 threshold sits > 6 standard deviations away.
    """
    rng = np.random.default_rng(0)
    base = _unit_rows(rng.standard_normal((1000, 128)))
    originals = rng.choice(1000, size=200, replace=False)
    dups = _unit_rows(base[originals] + 0.02 * rng.standard_normal((200, 128)))
    return np.concatenate([base, dups]), np.arange(1000, 1200), originals
