"""Resumable stages: each stage owns one directory under the work dir and commits it atomically.

A stage function writes its files into ``<work_dir>/<name>.partial/``; when it returns, a
``done.json`` (its metadata, parameters and the list of outputs) is added and the directory is
renamed to ``<work_dir>/<name>/``. A stage is done iff that directory holds ``done.json`` and
every output it lists, so a rerun skips finished stages and a crash loses at most the stage in
progress (its ``.partial`` directory is removed on failure and on the next run).
"""

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datamodules.curation.errors import CurationError

DONE_FILE = "done.json"
log = logging.getLogger(__name__)

StageFn = Callable[[Path], Mapping[str, Any] | None]


@dataclass(frozen=True)
class StageResult:
    """Where a stage's outputs are, its metadata, and whether this run skipped it."""

    name: str
    path: Path
    metadata: dict[str, Any]
    skipped: bool


def write_json_atomic(path: Path, obj: Any) -> None:
    """``json.dump`` to ``<path>.tmp``, fsync, then rename over ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_done(path: Path) -> dict[str, Any] | None:
    """The metadata of the finished stage at ``path``, or None if it is not (completely) there."""
    done = path / DONE_FILE
    if not done.is_file():
        return None
    try:
        meta = json.loads(done.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    if not all((path / name).exists() for name in meta.get("outputs", [])):
        return None
    return meta


def _normalise(params: Mapping[str, Any] | None) -> Any:
    return json.loads(json.dumps(params or {}, sort_keys=True, default=str))


def run_stage(
    work_dir: str | Path,
    name: str,
    fn: StageFn,
    params: Mapping[str, Any] | None = None,
    is_main_process: bool = True,
    collective: bool = False,
    wait_timeout_s: float = 24 * 3600,
) -> StageResult:
    """Run ``fn(partial_dir)`` unless stage ``name`` is already done in ``work_dir``.

    ``params`` (JSON-able) are stored in ``done.json``; a finished stage computed with other
    params is an error rather than a silent reuse. Under DDP every rank calls this with the same
    arguments: a ``collective`` stage (embedding) runs ``fn`` on every rank, others only on the
    main process while the other ranks wait for its ``done.json``. Only the main process
    prepares, commits and cleans up the directory.
    """
    work_dir = Path(work_dir)
    final, partial = work_dir / name, work_dir / f"{name}.partial"
    params = _normalise(params)
    if not (is_main_process or collective):
        _wait_until_done(final, wait_timeout_s)
    meta = read_done(final)
    if meta is not None:
        if meta.get("params", {}) != params:
            before = meta.get("params", {})
            changed = {k: (before.get(k), params.get(k)) for k in {*before, *params}
                       if before.get(k) != params.get(k)}  # fmt: skip
            raise CurationError(
                f"stage '{name}' in {final} was computed with other params (key: (then, now)): "
                f"{changed}; use another work_dir, or delete {final} and the stages after it"
            )
        log.info("stage %s: done, skipped (%s)", name, final)
        return StageResult(name, final, meta, skipped=True)
    if is_main_process:
        shutil.rmtree(final, ignore_errors=True)  # incomplete leftovers
        shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True, exist_ok=True)
    log.info("stage %s: running", name)
    start = time.perf_counter()
    try:
        metadata = dict(fn(partial) or {})
    except BaseException:
        if is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
        raise
    if not is_main_process:
        return StageResult(name, final, metadata, skipped=False)
    meta = {
        **metadata,
        "stage": name,
        "params": params,
        "outputs": sorted(p.name for p in partial.iterdir()),
        "seconds": round(time.perf_counter() - start, 3),
    }
    write_json_atomic(partial / DONE_FILE, meta)
    os.replace(partial, final)
    return StageResult(name, final, meta, skipped=False)


def _wait_until_done(path: Path, timeout_s: float, poll_s: float = 1.0) -> None:
    """Block (a non-main rank) until the main process has committed the stage at ``path``."""
    deadline = time.monotonic() + timeout_s
    while read_done(path) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"stage {path} was not finished by the main process in time")
        time.sleep(poll_s)
