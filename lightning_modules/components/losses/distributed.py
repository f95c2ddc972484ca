"""All-reduce helpers that are the identity without a process group (spec D3, PR #590).

The reference all-reduces unconditionally in its iBOT Sinkhorn-Knopp and crashes in a single
process; every cross-process sum here goes through these helpers instead.
"""

import torch
import torch.distributed as dist


def world_size() -> int:
    """Number of processes, 1 without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over processes (identity when single-process); returns ``tensor``."""
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """In-place element-wise max over processes (identity when single-process)."""
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor
