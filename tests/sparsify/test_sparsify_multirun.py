"""The Hydra multirun sweep of experiments/sparsify.py writes one result per sweep point."""

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import REPO_ROOT


def test_eps_sweep_writes_one_result_per_point(lenet_checkpoint: Path, tmp_path: Path) -> None:
    cmd = [
        sys.executable, str(REPO_ROOT / "experiments" / "sparsify.py"), "-m",
        f"source_ckpt={lenet_checkpoint}", "prune.eps_entropy=1e-4,1e-2", "finetune.epochs=0",
        "calibration.images=64", "logger=csv", "report.latency=false",
        f"paths.log_dir={tmp_path}",
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=os.environ)
    assert result.returncode == 0, result.stderr[-2000:]
    results = sorted(tmp_path.glob("sparsify/multirun/*/*/result.json"))
    assert [p.parent.name.split("_")[1] for p in results] == ["eps0.0001", "eps0.01"]
    eps = [json.loads(p.read_text())["prune"]["eps_entropy"] for p in results]
    assert eps == [1e-4, 1e-2]
