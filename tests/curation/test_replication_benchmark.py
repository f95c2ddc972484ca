"""The curation replication benchmark reuses finished training runs and summarises paired gaps."""

from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
from omegaconf import DictConfig, OmegaConf

from experiments.benchmarks import curation_replication as bench


def _config(tmp_path: Path, name: str, steps: int = 8) -> DictConfig:
    a = Namespace(train_steps=steps, knn_bank=100, train_overrides=[])
    return bench.train_config(tmp_path / "curated.csv", tmp_path / name, 0, a)


def _finish(cfg: DictConfig, knn: float, step: int, version: int = 0) -> None:
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out / "composed_config.yaml")
    log = out / "csv" / f"version_{version}" / "metrics.csv"
    log.parent.mkdir(parents=True)
    log.write_text(f"probe/knn_top1_k20,step,train/loss\n,3,1.5\n{knn},{step},\n")


def test_a_finished_run_with_the_same_config_is_reused(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "run")
    assert bench.finished_knn(Path(cfg.paths.output_dir), cfg) is None  # nothing there yet
    _finish(cfg, 0.625, step=8)
    assert bench.finished_knn(Path(cfg.paths.output_dir), cfg) == pytest.approx(0.625)
    # the saved yaml reads back equal to a freshly composed config (what a rerun compares)
    assert bench.finished_knn(Path(cfg.paths.output_dir), _config(tmp_path, "run")) == 0.625


def test_a_run_composed_otherwise_or_not_at_its_last_step_is_not_reused(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "run")
    _finish(cfg, 0.625, step=8)
    longer = _config(tmp_path, "run", steps=16)
    assert bench.finished_knn(Path(longer.paths.output_dir), longer) is None
    killed = _config(tmp_path, "killed")
    _finish(killed, 0.5, step=4)  # an intermediate kNN, not the final one
    assert bench.finished_knn(Path(killed.paths.output_dir), killed) is None


def test_train_pairs_trains_only_what_is_not_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trained = []

    def fake_train(cfg: DictConfig) -> dict[str, float]:
        trained.append(cfg.seed)
        return {"probe/knn_top1_k20": 0.5}

    monkeypatch.setattr(bench, "train", fake_train)
    configs = {
        (s, n): OmegaConf.create({"seed": s}) for s in (0, 1) for n in ("curated", "uncurated")
    }
    done = {
        (0, "curated"): 0.6,
        (0, "uncurated"): 0.55,
        (1, "curated"): 0.52,
        (1, "uncurated"): None,
    }
    rows = bench._train_pairs(configs, done, [0, 1])
    assert trained == [1]
    assert rows[0] == ["0", "0.6000", "0.5500", "+0.0500", "reused / reused"]
    assert rows[1][:4] == ["1", "0.5200", "0.5000", "+0.0200"]
    assert rows[2][0] == "mean" and rows[2][3].startswith("+0.0350 (sd 0.0212")


def test_paired_summary_is_the_t_interval_of_the_gaps() -> None:
    gaps = [0.0156, -0.0182, 0.0014]
    mean, sd, lo, hi = bench.paired_summary(gaps)
    assert mean == pytest.approx(np.mean(gaps)) and sd == pytest.approx(np.std(gaps, ddof=1))
    half = 4.302653 * sd / np.sqrt(3)  # t(0.975, 2 degrees of freedom)
    assert (lo, hi) == pytest.approx((mean - half, mean + half), rel=1e-5)
    one = bench.paired_summary([0.01])
    assert one[0] == 0.01 and all(np.isnan(one[1:]))
