"""Two real gloo processes vs one process on the concatenated batch (spec D3, §13.6)."""

import importlib
import socket
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.multiprocessing as mp

from lightning_modules.components.losses import Centering, KoLeoLoss, sinkhorn_knopp

WORLD = 2
TIMEOUT_S = 90


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def worker_module() -> ModuleType:
    """The worker, imported by name from this folder so spawned children can unpickle it."""
    here = str(Path(__file__).parent)
    if here not in sys.path:
        sys.path.insert(0, here)  # spawned children inherit sys.path
    return importlib.import_module("dinov2_dist_worker")


@pytest.fixture(scope="module")
def results(worker_module: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Outputs of the 2 gloo processes, one dict per rank."""
    out_dir = tmp_path_factory.mktemp("gloo")
    context = mp.start_processes(
        worker_module.run,
        args=(WORLD, free_port(), str(out_dir)),
        nprocs=WORLD,
        join=False,
        # fork (as DataLoader workers) skips re-importing torch in each child; the worker
        # runs single-threaded, so the parent's OpenMP pool is never used after the fork.
        start_method="fork" if "fork" in mp.get_all_start_methods() else "spawn",
    )
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"gloo workers did not finish within {TIMEOUT_S} s")
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD)]


def gathered(results: list[dict], key: str) -> torch.Tensor:
    return torch.cat([r[key] for r in results])


def test_dino_sinkhorn_equals_single_process(results, worker_module) -> None:
    full = worker_module.full_inputs()
    single = sinkhorn_knopp(full["dino"], worker_module.TEMP)
    torch.testing.assert_close(gathered(results, "dino_sk"), single, atol=1e-6, rtol=0)
    plain = sinkhorn_knopp(full["dino"], worker_module.TEMP, subtract_max=False)
    torch.testing.assert_close(gathered(results, "dino_sk_plain"), plain, atol=1e-6, rtol=0)


def test_ibot_sinkhorn_with_unequal_counts_equals_single_process(results, worker_module) -> None:
    full = worker_module.full_inputs()
    assert [r["ibot_sk"].shape[0] for r in results] == list(worker_module.IBOT_ROWS)
    single = sinkhorn_knopp(full["ibot"], worker_module.TEMP)
    torch.testing.assert_close(gathered(results, "ibot_sk"), single, atol=1e-6, rtol=0)
    single_empty = sinkhorn_knopp(full["ibot_one_empty"], worker_module.TEMP)
    torch.testing.assert_close(
        gathered(results, "ibot_sk_one_empty"), single_empty, atol=1e-6, rtol=0
    )


def test_dino_center_update_equals_single_process(results, worker_module) -> None:
    full = worker_module.full_inputs()
    single = Centering(worker_module.K)
    single.update(full["dino"])
    single.update(full["dino_next"])
    for r in results:
        torch.testing.assert_close(r["dino_center"], single.center, atol=1e-6, rtol=0)


def test_ibot_center_is_unweighted_mean_of_process_means(results, worker_module) -> None:
    full, rows = worker_module.full_inputs(), worker_module.IBOT_ROWS
    means = [worker_module.shard(full["ibot"], rows, r).mean(0, keepdim=True) for r in range(2)]
    expected = 0.1 * (means[0] + means[1]) / 2
    pooled = 0.1 * full["ibot"].mean(0, keepdim=True)  # the token-weighted mean: not the rule
    for r in results:
        torch.testing.assert_close(r["ibot_center"], expected, atol=1e-6, rtol=0)
        assert not torch.allclose(r["ibot_center"], pooled, atol=1e-4)
    # a process without masked tokens is left out of the mean instead of counting as zero
    only = 0.1 * full["ibot_one_empty"].mean(0, keepdim=True)
    for r in results:
        torch.testing.assert_close(r["ibot_center_one_empty"], only, atol=1e-6, rtol=0)


def test_koleo_stays_local(results, worker_module) -> None:
    full = worker_module.full_inputs()
    rows = (worker_module.DINO_ROWS,) * 2
    pooled = KoLeoLoss()(full["features"])
    for rank, r in enumerate(results):
        local = KoLeoLoss()(worker_module.shard(full["features"], rows, rank))
        torch.testing.assert_close(r["koleo"], local)
        assert not torch.allclose(r["koleo"], pooled)
