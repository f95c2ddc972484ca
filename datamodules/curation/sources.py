"""Image sources a manifest row can point at: ``(source name, index within the source)``.

A source is described by a small JSON-able spec, stored beside every manifest, so a manifest
is self-describing:

- ``{"kind": "torchvision", "dataset": "mnist", "train": true}``: a split loaded with
  :func:`load_image_tensors` from the data root of the machine reading it;
- ``{"kind": "npy", "path": "planted.npy", "labels": "planted_labels.npy"}``: a uint8 array
  ``(N, C, H, W)`` (labels optional), e.g. generated images of the replication set-up;
- ``{"kind": "noise", "count": 100, "shape": [1, 28, 28], "seed": 0}``: uniform noise, image
  ``i`` a pure function of ``(seed, i)``;
- ``{"kind": "folder", "path": "images/"}``: image files (sorted paths, PIL), unlabelled.
"""

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from datamodules.components.image_tensors import load_image_tensors
from datamodules.curation.errors import CurationError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
PATH_KEYS = ("path", "labels")  # spec keys holding file paths (relative to the manifest)
_NOISE_STRIDE = 1_000_003


class UnreadableImageError(OSError):
    """One image of a source cannot be read (corrupt or missing file)."""


class ImageSource(ABC):
    """Random access to uint8 images ``(C, H, W)`` and labels (-1: unlabelled)."""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def load(self, index: int) -> torch.Tensor:
        """uint8 ``(C, H, W)``; raises :class:`UnreadableImageError` for a bad image."""

    def label(self, index: int) -> int:
        return -1

    def describe(self, index: int) -> str:
        return f"#{index}"


class TensorSource(ImageSource):
    """Images held in an array ``(N, C, H, W)`` uint8 (torch tensor or numpy memmap)."""

    def __init__(self, images: Any, labels: Any = None) -> None:
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> torch.Tensor:
        image = self.images[index]
        return image if isinstance(image, torch.Tensor) else torch.from_numpy(np.array(image))

    def label(self, index: int) -> int:
        return -1 if self.labels is None else int(self.labels[index])


class NoiseSource(ImageSource):
    """``count`` uniform-noise uint8 images of ``shape``; image ``i`` depends only on (seed, i)."""

    def __init__(self, count: int, shape: tuple[int, ...], seed: int = 0) -> None:
        self.count, self.shape, self.seed = count, tuple(shape), seed

    def __len__(self) -> int:
        return self.count

    def load(self, index: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * _NOISE_STRIDE + index)
        return torch.randint(0, 256, self.shape, generator=g, dtype=torch.uint8)


class FolderSource(ImageSource):
    """Image files under ``root`` (recursive, sorted by path); read with PIL when loaded."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise CurationError(f"Image folder {self.root} does not exist.")
        self.files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> torch.Tensor:
        path = self.files[index]
        try:
            with Image.open(path) as img:
                img = img.convert("L" if img.mode in ("1", "L", "I", "I;16", "F") else "RGB")
                array = np.array(img, dtype=np.uint8)
        except (OSError, ValueError, SyntaxError) as err:
            raise UnreadableImageError(f"{path} ({type(err).__name__}: {err})") from err
        tensor = torch.from_numpy(array)
        return tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()

    def describe(self, index: int) -> str:
        return str(self.files[index])


@lru_cache(maxsize=8)
def _torchvision_split(dataset: str, root: str, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return load_image_tensors(dataset, root, train=train)


def open_source(spec: Mapping[str, Any], data_dir: str | Path | None) -> ImageSource:
    """Build the source of ``spec`` (paths in it already absolute, see :func:`resolve_paths`)."""
    kind = spec.get("kind")
    if kind == "torchvision":
        if data_dir is None:
            raise CurationError(f"source {dict(spec)} needs a data_dir (set paths.data_dir)")
        images, labels = _torchvision_split(spec["dataset"], str(data_dir), bool(spec["train"]))
        return TensorSource(images, labels)
    if kind == "npy":
        for key in ("path", "labels"):
            if spec.get(key) and not Path(spec[key]).is_file():
                raise CurationError(f"source file {spec[key]} does not exist (spec {dict(spec)})")
        images = np.load(spec["path"], mmap_mode="r")
        if images.dtype != np.uint8 or images.ndim != 4:
            raise CurationError(
                f"{spec['path']}: expected uint8 (N, C, H, W), got {images.dtype} {images.shape}"
            )
        labels = np.load(spec["labels"], mmap_mode="r") if spec.get("labels") else None
        return TensorSource(images, labels)
    if kind == "noise":
        return NoiseSource(int(spec["count"]), tuple(spec["shape"]), int(spec.get("seed", 0)))
    if kind == "folder":
        return FolderSource(spec["path"])
    raise CurationError(
        f"unknown source kind {kind!r} in {dict(spec)}; use torchvision, npy, noise or folder"
    )


def resolve_paths(spec: Mapping[str, Any], base_dir: Path) -> dict[str, Any]:
    """A copy of ``spec`` whose relative file paths are made absolute against ``base_dir``."""
    out = dict(spec)
    for key in PATH_KEYS:
        if out.get(key):
            out[key] = str((base_dir / out[key]).resolve())
    return out


def relative_paths(spec: Mapping[str, Any], base_dir: Path) -> dict[str, Any]:
    """A copy of ``spec`` whose file paths are relative to ``base_dir`` (portable manifests)."""
    out = dict(spec)
    for key in PATH_KEYS:
        if out.get(key):
            out[key] = os.path.relpath(Path(out[key]).resolve(), base_dir.resolve())
    return out
