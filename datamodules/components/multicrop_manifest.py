"""A curation manifest as a multi-crop image source (spec R1: image folders, flat folders or a
manifest, including the output of ``experiments/curate.py``, spec D8)."""

from functools import cached_property
from pathlib import Path

import torch

from datamodules.curated_datamodule import ManifestImageSource


class ManifestSource:
    """The rows of a manifest ``.csv`` as an ``ImageSource`` for ``MultiCropDataModule``.

    ``image(i)`` is row ``i``'s uint8 ``(C, H, W)`` image and ``label(i)`` its source's label
    when every row is labelled, else None for all rows (unlabelled sources label rows -1, and a
    batch must not mix labelled and unlabelled samples). Rows keep the manifest's order, so a
    curated manifest trains on exactly the images it lists, mixed sources included.

    Args:
        manifest: the manifest ``.csv`` (its ``.sources.json`` beside it).
        data_dir: torchvision root for the manifest's ``torchvision`` sources.
    """

    def __init__(self, manifest: str | Path, data_dir: str | Path | None = None) -> None:
        self.rows = ManifestImageSource(manifest, data_dir)

    def __len__(self) -> int:
        return len(self.rows)

    def image(self, index: int) -> torch.Tensor:
        return self.rows.load(index)

    def label(self, index: int) -> int | None:
        return self.rows.label(index) if self.has_labels else None

    @cached_property
    def has_labels(self) -> bool:
        """Whether every row is labelled (only then can kNN / linear probes use the source)."""
        return all(self.rows.label(i) >= 0 for i in range(len(self.rows)))
