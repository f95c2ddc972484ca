"""Manifests: lists of images as ``(source, index, reason)`` rows plus the specs of their sources.

On disk a manifest is two files: ``NAME.csv`` (header ``source,index,reason``, one image a row)
and ``NAME.sources.json`` (source name → spec, see :mod:`datamodules.curation.sources`; file
paths relative to the manifest). Both are written to temporary names and renamed into place.
Pools, evaluation and query sets, the embedding index and the curated output are all manifests.
"""

import csv
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.curation.errors import CurationError
from datamodules.curation.sources import relative_paths, resolve_paths

COLUMNS = ("source", "index", "reason")
REASON_SEPARATOR = ";"


@dataclass
class Manifest:
    """Rows ``source (N,) str``, ``index (N,) int64``, ``reason (N,) str`` and source specs."""

    sources: dict[str, dict[str, Any]]
    source: np.ndarray
    index: np.ndarray
    reason: np.ndarray | str | None = None  # one reason a row, or the same for all

    def __post_init__(self) -> None:
        self.source = np.asarray(self.source, dtype=object).reshape(-1)
        self.index = np.asarray(self.index, dtype=np.int64).reshape(-1)
        if self.reason is None or isinstance(self.reason, str):
            self.reason = np.full(len(self.source), self.reason or "", dtype=object)
        self.reason = np.asarray(self.reason, dtype=object).reshape(-1)
        if not len(self.source) == len(self.index) == len(self.reason):
            raise ValueError("source, index and reason must have the same length")
        unknown = set(self.source.tolist()) - set(self.sources)
        if unknown:
            raise CurationError(f"manifest rows name sources without a spec: {sorted(unknown)}")

    def __len__(self) -> int:
        return len(self.source)

    def select(self, rows: np.ndarray, reason: str | Sequence[str] | None = None) -> "Manifest":
        """The rows ``rows`` (indices or a boolean mask), optionally with new reasons."""
        new_reason = self.reason[rows] if reason is None else reason
        return Manifest(dict(self.sources), self.source[rows], self.index[rows], new_reason)

    def keys(self) -> list[tuple[str, int]]:
        return list(zip(self.source.tolist(), self.index.tolist(), strict=True))


def sources_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.stem + ".sources.json")


def _replace_atomically(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_manifest(path: str | Path, manifest: Manifest) -> Path:
    """Write ``path`` (``.csv``) and its ``.sources.json``; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    used = sorted(set(manifest.source.tolist()))
    specs = {name: relative_paths(manifest.sources[name], path.parent) for name in used}

    def write_rows(f) -> None:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows(
            zip(manifest.source, manifest.index.tolist(), manifest.reason, strict=True)
        )

    _replace_atomically(path, write_rows)
    _replace_atomically(sources_path(path), lambda f: json.dump(specs, f, indent=1))
    return path


def read_manifest(path: str | Path) -> Manifest:
    """Read a manifest written by :func:`write_manifest`; file paths in specs become absolute."""
    path = Path(path)
    spec_file = sources_path(path)
    for p in (path, spec_file):
        if not p.is_file():
            raise CurationError(f"Manifest file {p} does not exist.")
    try:
        specs: Mapping[str, Any] = json.loads(spec_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CurationError(f"{spec_file} is not valid JSON: {err}") from err
    sources, indices, reasons = [], [], []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(header) != COLUMNS:
            raise CurationError(f"{path}: header must be {','.join(COLUMNS)}, got {header}")
        for line, row in enumerate(reader, start=2):
            if len(row) != len(COLUMNS) or not row[1].isdigit():
                raise CurationError(f"{path}, line {line}: expected source,index,reason: {row}")
            sources.append(row[0])
            indices.append(int(row[1]))
            reasons.append(row[2])
    specs = {name: resolve_paths(spec, path.parent) for name, spec in specs.items()}
    return Manifest(specs, np.array(sources, dtype=object), np.array(indices), reasons)


def merge_manifests(parts: Sequence[Manifest]) -> Manifest:
    """Union of ``parts``: each ``(source, index)`` once, reasons joined with ``;``, first-seen order.

    Sources of the same name must have the same spec in every part.
    """
    specs: dict[str, dict[str, Any]] = {}
    for part in parts:
        for name, spec in part.sources.items():
            if specs.setdefault(name, spec) != spec:
                raise CurationError(
                    f"source {name!r} has two different specs: {specs[name]}, {spec}"
                )
    order: dict[tuple[str, int], list[str]] = {}
    for part in parts:
        for key, reason in zip(part.keys(), part.reason.tolist(), strict=True):
            reasons = order.setdefault(key, [])
            if reason and reason not in reasons:
                reasons.append(reason)
    keys = list(order)
    return Manifest(
        specs,
        np.array([k[0] for k in keys], dtype=object),
        np.array([k[1] for k in keys], dtype=np.int64),
        np.array([REASON_SEPARATOR.join(r) for r in order.values()], dtype=object),
    )
