"""Curated images: a manifest (e.g. the output of ``experiments/curate.py``) as a dataset.

``ManifestImageSource`` is a plain dataset over the rows of a manifest; each row names an
image of a source (mnist, fashion_mnist, noise, planted arrays, image folders, ...; see
:mod:`datamodules.curation.sources`). ``CuratedDataModule`` serves it for training (spec R1):
``(image, label)`` batches, label -1 for unlabelled sources; plug a multi-crop ``transform``
and ``collate_fn`` in for DINOv2.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from datamodules.components.seeded_sampler import SeededEpochSampler
from datamodules.curation.errors import CurationError
from datamodules.curation.manifest import Manifest, read_manifest
from datamodules.curation.sources import ImageSource, open_source
from datamodules.resumable_datamodule import ResumableDataModule

Transform = Callable[..., Any]


class ManifestImageSource(Dataset):
    """The images of a manifest, in row order.

    ``dataset[i]`` or ``dataset[(i, seed)]`` → ``(image, label)``: the uint8 ``(C, H, W)``
    image (resized to ``image_size`` if set, grayscale repeated to ``channels`` if set) passed
    through ``transform`` (called with a
    generator seeded by ``seed`` when the key carries one, e.g. from ``SeededEpochSampler``),
    and the source's label (-1: unlabelled).

    Args:
        manifest: a :class:`Manifest` or the path of its ``.csv``.
        data_dir: torchvision data root for ``torchvision`` sources.
    """

    def __init__(
        self,
        manifest: Manifest | str | Path,
        data_dir: str | Path | None = None,
        transform: Transform | None = None,
        image_size: int | None = None,
        channels: int | None = None,
    ) -> None:
        self.manifest = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
        self.transform = transform
        self.image_size = image_size
        self.channels = channels
        used = sorted(set(self.manifest.source.tolist()))
        self.sources: dict[str, ImageSource] = {
            name: open_source(self.manifest.sources[name], data_dir) for name in used
        }
        for name, source in self.sources.items():
            biggest = int(self.manifest.index[self.manifest.source == name].max())
            if biggest >= len(source):
                raise CurationError(
                    f"manifest row names {name}[{biggest}], but source {name!r} has only "
                    f"{len(source)} images"
                )

    def __len__(self) -> int:
        return len(self.manifest)

    def load(self, row: int) -> torch.Tensor:
        """The raw uint8 ``(C, H, W)`` image of ``row`` (resized if ``image_size``)."""
        image = self.sources[self.manifest.source[row]].load(int(self.manifest.index[row]))
        if self.image_size is not None and image.shape[-2:] != (self.image_size,) * 2:
            image = v2.functional.resize(image, [self.image_size] * 2, antialias=True)
        if self.channels is not None and image.shape[0] != self.channels:
            if image.shape[0] != 1:  # only grayscale can be repeated (e.g. for RGB backbones)
                raise CurationError(
                    f"{self.describe(row)} has {image.shape[0]} channels, not 1 or {self.channels}"
                )
            image = image.expand(self.channels, -1, -1).contiguous()
        return image

    def label(self, row: int) -> int:
        return self.sources[self.manifest.source[row]].label(int(self.manifest.index[row]))

    def describe(self, row: int) -> str:
        name, index = self.manifest.source[row], int(self.manifest.index[row])
        return f"{name}[{index}] ({self.sources[name].describe(index)})"

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Any, int]:
        row, seed = key if isinstance(key, tuple) else (key, None)
        image = self.load(row)
        if self.transform is not None:
            if seed is None:
                image = self.transform(image)
            else:
                image = self.transform(image, torch.Generator().manual_seed(seed))
        return image, self.label(row)


class CuratedDataModule(ResumableDataModule):
    """Training batches from a manifest, with exact mid-epoch resume.

    Args:
        manifest_path: ``.csv`` written by ``write_manifest`` (e.g. ``<work_dir>/manifest/
            curated.csv``).
        transform: per-image transform ``(image[, generator])`` (e.g. ``MultiCropTransform``);
            None yields uint8 images, which need a common ``image_size`` to be batched.
        collate_fn: batch collation (e.g. ``MultiCropCollate``); None: default collate.
        channels: repeat grayscale images to this many channels (3 for RGB backbones).
    """

    def __init__(
        self,
        manifest_path: str,
        data_dir: str | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        image_size: int | None = None,
        transform: Transform | None = None,
        collate_fn: Callable | None = None,
        seed: int = 0,
        channels: int | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        self.save_hyperparameters(logger=False, ignore=["transform", "collate_fn"])
        self.transform = transform
        self.collate_fn = collate_fn
        self.data_train: ManifestImageSource | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.data_train is None:
            hp = self.hparams
            self.data_train = ManifestImageSource(
                hp.manifest_path, hp.data_dir, self.transform, hp.image_size, hp.channels
            )
            if len(self.data_train) == 0:
                raise CurationError(f"manifest {hp.manifest_path} holds no images")

    def train_dataloader(self) -> DataLoader:
        sampler = SeededEpochSampler(len(self.data_train), seed=self.seed, shuffle=True)
        if self._resume_at is not None:
            epoch, batches = self._resume_at
            sampler.set_epoch(epoch)
            sampler.skip_in_epoch(epoch, batches * self.batch_size)
            self._resume_at = None
        return DataLoader(
            self.data_train,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            drop_last=True,
            collate_fn=self.collate_fn,
        )

    def labels(self) -> np.ndarray:
        """Labels ``(N,)`` of every row (-1: unlabelled), e.g. for kNN evaluation."""
        return np.array([self.data_train.label(i) for i in range(len(self.data_train))])
