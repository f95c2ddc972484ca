"""Worker for the 2-process gloo test (imported by name so spawned children can unpickle it).

Every process builds the same full batch from a fixed seed, keeps its own shard, runs the
distributed code paths and saves its outputs; the test compares them with single-process
results on the concatenated batch.
"""

from pathlib import Path

import torch
import torch.distributed as dist

from lightning_modules.components.losses import Centering, KoLeoLoss, sinkhorn_knopp

K = 12
DINO_ROWS = 6  # per process: equal, as 2B CLS rows
IBOT_ROWS = (5, 9)  # per process: unequal masked-token counts
IBOT_ROWS_ONE_EMPTY = (4, 0)
TEMP = 0.05


def full_inputs() -> dict[str, torch.Tensor]:
    """The concatenated batch, identical in every process (and in the test)."""
    g = torch.Generator().manual_seed(1234)
    return {
        "dino": torch.randn(2 * DINO_ROWS, K, generator=g),
        "dino_next": torch.randn(2 * DINO_ROWS, K, generator=g),
        "ibot": torch.randn(sum(IBOT_ROWS), K, generator=g),
        "ibot_one_empty": torch.randn(sum(IBOT_ROWS_ONE_EMPTY), K, generator=g),
        "features": torch.randn(2 * DINO_ROWS, 8, generator=g),
    }


def shard(x: torch.Tensor, rows: tuple[int, ...], rank: int) -> torch.Tensor:
    start = sum(rows[:rank])
    return x[start : start + rows[rank]]


def run(rank: int, world_size: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        full = full_inputs()
        dino_rows = (DINO_ROWS,) * world_size
        dino = shard(full["dino"], dino_rows, rank)
        ibot = shard(full["ibot"], IBOT_ROWS, rank)
        out = {
            "dino_sk": sinkhorn_knopp(dino, TEMP),
            "dino_sk_plain": sinkhorn_knopp(dino, TEMP, subtract_max=False),
            "ibot_sk": sinkhorn_knopp(ibot, TEMP),
            "ibot_sk_one_empty": sinkhorn_knopp(
                shard(full["ibot_one_empty"], IBOT_ROWS_ONE_EMPTY, rank), TEMP
            ),
            "koleo": KoLeoLoss()(shard(full["features"], dino_rows, rank)),
        }
        dino_center = Centering(K)
        dino_center.update(dino)
        dino_center.update(shard(full["dino_next"], dino_rows, rank))
        ibot_center = Centering(K)
        ibot_center.update(ibot)
        ibot_center_one_empty = Centering(K)
        ibot_center_one_empty.update(shard(full["ibot_one_empty"], IBOT_ROWS_ONE_EMPTY, rank))
        out["dino_center"] = dino_center.center
        out["ibot_center"] = ibot_center.center
        out["ibot_center_one_empty"] = ibot_center_one_empty.center
        torch.save(out, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
