"""Checkpoint I/O that never leaves a half-written file in place of a good one."""

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes to ``<path>.tmp``, fsyncs, then ``os.replace``s it over the target.

    ``os.replace`` is atomic on POSIX and Windows, so a process killed mid-write leaves the
    previous checkpoint intact (plus at most a stale ``.tmp`` that the next save overwrites).
    Lightning's default I/O truncates the target first and can leave only a broken file.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:  # persist the rename itself
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
