"""A process killed while writing a checkpoint leaves the previous checkpoint loadable."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from callbacks.atomic_checkpoint_io import AtomicCheckpointIO

WRITER = """
import sys, torch
from callbacks.atomic_checkpoint_io import AtomicCheckpointIO
io, path = AtomicCheckpointIO(), sys.argv[1]
for version in range(1000):
    io.save_checkpoint({"version": version, "w": torch.full((25_000_000,), float(version))}, path)
"""


def test_roundtrip_and_no_leftovers(tmp_path: Path) -> None:
    path = tmp_path / "a.ckpt"
    AtomicCheckpointIO().save_checkpoint({"x": torch.arange(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt"]


def test_kill_during_write_keeps_previous_checkpoint(tmp_path: Path) -> None:
    path, tmp = tmp_path / "last.ckpt", tmp_path / "last.ckpt.tmp"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)])
    try:
        deadline = time.monotonic() + 120
        # wait for a complete checkpoint, then for the next write to be under way
        while not (path.exists() and tmp.exists() and tmp.stat().st_size > 0):
            assert time.monotonic() < deadline, "writer made no progress"
            assert proc.poll() is None, "writer died"
            time.sleep(0.001)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert tmp.exists()  # killed mid-write: the partial file is the temporary one
    state = torch.load(path, weights_only=True)
    assert torch.all(state["w"] == state["version"])  # complete and self-consistent
