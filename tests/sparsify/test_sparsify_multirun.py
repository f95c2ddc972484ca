"""The Hydra multirun sweep of experiments/sparsify.py writes one result per sweep point."""

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import REPO_ROOT

from experiments.benchmarks.sparsity_curve import collect


def test_eps_sweep_writes_one_result_per_point_and_a_logged_curve(
    lenet_checkpoint: Path, tmp_path: Path
) -> None:
    cmd = [
        sys.executable, str(REPO_ROOT / "experiments" / "sparsify.py"), "-m",
        f"source_ckpt={lenet_checkpoint}", "prune.eps_entropy=1e-4,1e-2", "finetune.epochs=0",
        "calibration.images=64", "logger=csv", "report.latency=false", "report.headline=flops",
        f"paths.log_dir={tmp_path}",
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=os.environ)
    assert result.returncode == 0, result.stderr[-2000:]
    results = sorted(tmp_path.glob("sparsify/multirun/*/*/result.json"))
    assert [p.parent.name.split("_")[1] for p in results] == ["eps0.0001", "eps0.01"]
    eps = [json.loads(p.read_text())["prune"]["eps_entropy"] for p in results]
    assert eps == [1e-4, 1e-2]
    assert {json.loads(p.read_text())["headline"] for p in results} == {"flops"}

    summary = collect([tmp_path / "sparsify" / "multirun"], tmp_path / "curve")
    assert summary["headline"] == "flop_sparsity"
    assert (tmp_path / "curve" / "curve.png").stat().st_size > 0
    # the curve PNG went into an offline W&B run, as a logged media file
    assert list(Path(summary["wandb_dir"]).rglob("sparsity_accuracy_curve_*.png"))
    points = [json.loads(p.read_text()) for p in results]
    within = [q for q in points if q["dense_test_acc"] - q["pruned_test_acc"] <= 0.5]
    best = summary["best_pruned_test_acc"]
    if within:  # the sparsest (by FLOPs) of the points within 0.5 pt
        assert best["flop_sparsity"] == max(q["flop_sparsity"] for q in within)
    else:
        assert best is None
