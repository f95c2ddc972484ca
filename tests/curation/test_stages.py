"""Stages: atomic commit, skip when done, a crash loses only the stage in progress."""

import json
from pathlib import Path

import pytest

from datamodules.curation.errors import CurationError
from datamodules.curation.stages import DONE_FILE, read_done, run_stage


class Crash(RuntimeError):
    pass


class CountingStage:
    """Writes ``a.txt`` and ``b.txt``; with ``crash`` it raises between the two."""

    def __init__(self, crash: bool = False) -> None:
        self.calls, self.crash = 0, crash

    def __call__(self, out: Path) -> dict:
        self.calls += 1
        (out / "a.txt").write_text("a")
        if self.crash:
            raise Crash("simulated crash midway")
        (out / "b.txt").write_text("b")
        return {"rows": 2}


def test_crash_midway_leaves_no_output(tmp_path: Path) -> None:
    with pytest.raises(Crash):
        run_stage(tmp_path, "embed", CountingStage(crash=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert read_done(tmp_path / "embed") is None


def test_rerun_skips_finished_stages_and_redoes_the_crashed_one(tmp_path: Path) -> None:
    first, second = CountingStage(), CountingStage(crash=True)

    def pipeline() -> None:
        run_stage(tmp_path, "first", first, {"k": 64})
        run_stage(tmp_path, "second", second)

    with pytest.raises(Crash):
        pipeline()
    assert (first.calls, second.calls) == (1, 1)
    second.crash = False
    pipeline()  # resume: first is skipped, second runs again
    assert (first.calls, second.calls) == (1, 2)
    pipeline()  # everything done
    assert (first.calls, second.calls) == (1, 2)
    meta = json.loads((tmp_path / "first" / DONE_FILE).read_text())
    assert meta["outputs"] == ["a.txt", "b.txt"] and meta["rows"] == 2
    assert meta["params"] == {"k": 64}


def test_skipped_stage_returns_its_metadata(tmp_path: Path) -> None:
    stage = CountingStage()
    ran = run_stage(tmp_path, "s", stage)
    again = run_stage(tmp_path, "s", stage)
    assert not ran.skipped and again.skipped
    assert again.metadata["rows"] == 2 and again.path == tmp_path / "s"


def test_stale_partial_directory_of_a_killed_run_is_removed(tmp_path: Path) -> None:
    stale = tmp_path / "s.partial"
    stale.mkdir()
    (stale / "junk.bin").write_text("half written")
    run_stage(tmp_path, "s", CountingStage())
    assert not stale.exists()
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["a.txt", "b.txt", DONE_FILE]


def test_missing_output_means_not_done(tmp_path: Path) -> None:
    stage = CountingStage()
    run_stage(tmp_path, "s", stage)
    (tmp_path / "s" / "b.txt").unlink()
    run_stage(tmp_path, "s", stage)
    assert stage.calls == 2 and (tmp_path / "s" / "b.txt").is_file()


def test_changed_params_are_an_error_not_a_silent_reuse(tmp_path: Path) -> None:
    run_stage(tmp_path, "self_dedup", CountingStage(), {"threshold": 0.6})
    with pytest.raises(CurationError, match="self_dedup.*threshold.*0.6.*0.5"):
        run_stage(tmp_path, "self_dedup", CountingStage(), {"threshold": 0.5})
