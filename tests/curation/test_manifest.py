"""Manifests round-trip through disk; bad files give clear errors."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from datamodules.curation.errors import CurationError
from datamodules.curation.manifest import (
    Manifest,
    merge_manifests,
    read_manifest,
    sources_path,
    write_manifest,
)

SOURCES = {
    "mnist": {"kind": "torchvision", "dataset": "mnist", "train": True},
    "noise": {"kind": "noise", "count": 10, "shape": [1, 4, 4], "seed": 3},
}


def _manifest(tmp_path: Path) -> Manifest:
    np.save(tmp_path / "planted.npy", np.zeros((3, 1, 4, 4), np.uint8))
    sources = {**SOURCES, "planted": {"kind": "npy", "path": str(tmp_path / "planted.npy")}}
    reasons = ["in1k:knn(query=3,cos=0.912)", 'quote " and, comma', "multi\nline", "ünïcode", ""]
    return Manifest(
        sources, ["mnist", "noise", "planted", "mnist", "noise"], [5, 0, 2, 59999, 9], reasons
    )


def _assert_equal(a: Manifest, b: Manifest) -> None:
    assert a.sources == b.sources
    assert a.keys() == b.keys()
    assert a.reason.tolist() == b.reason.tolist()


def test_round_trip(tmp_path: Path) -> None:
    m = _manifest(tmp_path)
    path = write_manifest(tmp_path / "out" / "curated.csv", m)
    assert path.read_text().splitlines()[0] == "source,index,reason"
    assert sources_path(path).is_file()
    _assert_equal(read_manifest(path), m)
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_paths_are_relative_so_a_moved_folder_still_reads(tmp_path: Path) -> None:
    m = _manifest(tmp_path)
    write_manifest(tmp_path / "m.csv", m)
    assert '"path": "planted.npy"' in sources_path(tmp_path / "m.csv").read_text()
    moved = tmp_path.parent / (tmp_path.name + "_moved")
    shutil.copytree(tmp_path, moved)
    back = read_manifest(moved / "m.csv")
    assert back.sources["planted"]["path"] == str((moved / "planted.npy").resolve())


def test_select_and_merge(tmp_path: Path) -> None:
    m = _manifest(tmp_path)
    a = m.select(np.array([0, 1]), "a")
    b = m.select(np.array([1, 2]), "b")
    merged = merge_manifests([a, b, a])
    assert merged.keys() == [("mnist", 5), ("noise", 0), ("planted", 2)]
    assert merged.reason.tolist() == ["a", "a;b", "b"]


def test_merge_rejects_conflicting_sources(tmp_path: Path) -> None:
    a = Manifest({"x": {"kind": "noise", "count": 1, "shape": [1, 2, 2]}}, ["x"], [0])
    b = Manifest({"x": {"kind": "noise", "count": 2, "shape": [1, 2, 2]}}, ["x"], [0])
    with pytest.raises(CurationError, match="source 'x' has two different specs"):
        merge_manifests([a, b])


def test_empty_manifest_round_trips(tmp_path: Path) -> None:
    empty = Manifest({}, [], [])
    assert len(read_manifest(write_manifest(tmp_path / "e.csv", empty))) == 0


def test_bad_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(CurationError, match="does not exist"):
        read_manifest(tmp_path / "missing.csv")
    path = write_manifest(tmp_path / "m.csv", _manifest(tmp_path))
    path.write_text("src,idx\nmnist,1\n")
    with pytest.raises(CurationError, match="header must be source,index,reason"):
        read_manifest(path)
    path.write_text("source,index,reason\nmnist,-1,x\n")
    with pytest.raises(CurationError, match="line 2"):
        read_manifest(path)
    path.write_text("source,index,reason\nunknown,1,x\n")
    with pytest.raises(CurationError, match="without a spec: \\['unknown'\\]"):
        read_manifest(path)
