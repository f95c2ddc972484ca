"""Multi-crop self-supervised data (DINOv2 spec §3) with exact mid-epoch resume.

Sources: an ImageFolder tree (labels optional), a flat folder of images, a curation manifest,
MNIST, Fashion-MNIST, CIFAR-10 or scikit-learn digits (grayscale is replicated to 3 channels). Every random draw is a
function of (seed, epoch, position): ``SeededEpochSampler`` gives each position a sample seed,
the crops draw only from it, and the collate derives the batch's block masks from the batch's
sample seeds, so a resumed run sees exactly the batches an uninterrupted run sees.
"""

import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from datamodules.components.image_folder import (
    ImageFolderSource,
    ImageSource,
    LabelledEvalDataset,
    MultiCropDataset,
    TensorImageSource,
)
from datamodules.components.image_tensors import TORCHVISION_DATASETS, load_image_tensors
from datamodules.components.masking import BlockMaskGenerator
from datamodules.components.multicrop_collate import MultiCropCollate
from datamodules.components.multicrop_manifest import ManifestSource
from datamodules.components.multicrop_transforms import MultiCropTransform, build_eval_transform
from datamodules.resumable_datamodule import ResumableDataModule

TENSOR_SOURCES = (*TORCHVISION_DATASETS, "digits")
FOLDER_SOURCES = ("image_folder", "flat_folder", "manifest")
CROP_DEFAULTS: dict[str, Any] = {
    "global_size": 224, "local_size": 98, "global_scale": (0.32, 1.0),
    "local_scale": (0.05, 0.32), "n_local": 8, "blur_mode": "intended",
    "color_jitter_p": 0.8, "grayscale_p": 0.2,
}  # fmt: skip
MASK_DEFAULTS: dict[str, Any] = {
    "probability": 0.5, "ratio_range": (0.1, 0.5), "min_num_patches": 4,
    "max_patch_fraction": 0.5, "min_aspect": 0.3,
}  # fmt: skip
EVAL_DEFAULTS: dict[str, Any] = {
    "crop_size": None, "resize_ratio": 256 / 224, "batch_size": 256,
    "train_subset": None, "val_subset": None,
}  # fmt: skip


def _merge(defaults: dict[str, Any], given: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    given = dict(given or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"unknown data.{what} keys {unknown}; known: {sorted(defaults)}")
    return {**defaults, **given}


class SeededMultiCropCollate(MultiCropCollate):
    """``MultiCropCollate`` whose mask RNG is seeded from the batch's sample seeds.

    Samples are ``(crops, label or None, sample_seed)``; the same samples always give the same
    masks, in any process or worker, so masks need no RNG state in checkpoints.
    """

    _batch_rng: random.Random

    def __call__(self, samples: Sequence[tuple[dict, int | None, int]]) -> dict[str, torch.Tensor]:
        seeds = ",".join(str(s[2]) for s in samples)
        self._batch_rng = random.Random(f"masks/{self.seed}/{seeds}")
        return super().__call__([(crops, label) for crops, label, _ in samples])

    def _current_rng(self) -> random.Random:
        return self._batch_rng


class MultiCropDataModule(ResumableDataModule):
    """Multi-crop training batches and labelled evaluation loaders.

    Train batches are :class:`MultiCropCollate` dicts (``global_crops``, ``local_crops``,
    ``masks``, ``mask_indices``, ``mask_weights``, ``n_masked`` [, ``labels``]).

    For kNN / linear probes (deterministic eval transform, ``Resize(crop·256/224) →
    CenterCrop(crop)``, no shuffling, not sharded across processes):

    - ``knn_train_dataset()`` / ``knn_train_dataloader()``: the labelled training images (the
      kNN bank / probe training set);
    - ``knn_val_dataset()`` / ``knn_val_dataloader()``: the labelled held-out images (the test
      split of MNIST / Fashion-MNIST / CIFAR-10 / digits, or ``val_dir`` for folders).

    Each item is ``(image (3, S, S) float32, label int)``; ``num_classes`` gives the class count.

    Args:
        source: ``mnist`` | ``fashion_mnist`` | ``cifar10`` | ``digits`` | ``image_folder`` |
            ``flat_folder`` | ``manifest``.
        data_dir: torchvision root for datasets (and a manifest's torchvision sources); the
            image folder for folder sources.
        patch_size: backbone patch size; crop sizes are validated against it.
        crops: ``global_size``, ``local_size``, ``global_scale``, ``local_scale``, ``n_local``,
            ``blur_mode`` (``intended`` | ``reference_code``), ``color_jitter_p`` (0.8),
            ``grayscale_p`` (0.2).
        masking: ``probability`` (0.5 of the global crops), ``ratio_range`` (0.1, 0.5),
            ``min_num_patches`` (4), ``max_patch_fraction`` (0.5 of N), ``min_aspect`` (0.3).
        eval: ``crop_size`` (None: the global crop size), ``resize_ratio``, ``batch_size``,
            ``train_subset`` / ``val_subset`` (N evenly spaced images; None: all).
        image_size: resize in-memory datasets once to this size (e.g. 8x8 digits to 32).
        val_dir: labelled ImageFolder tree for ``knn_val_*`` with folder sources.
        use_labels: label ImageFolder trees by class folder.
        subset: keep N evenly spaced training images (quick runs); None: all.
        download: let torchvision download missing data (needs internet).
        manifest: the manifest ``.csv`` for ``source: manifest`` (e.g. the curated
            ``<work_dir>/manifest/curated.csv`` of ``experiments/curate.py``).
    """

    def __init__(
        self,
        source: str,
        data_dir: str,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        patch_size: int = 14,
        crops: Mapping[str, Any] | None = None,
        masking: Mapping[str, Any] | None = None,
        eval: Mapping[str, Any] | None = None,
        image_size: int | None = None,
        val_dir: str | None = None,
        use_labels: bool = True,
        subset: int | None = None,
        download: bool = False,
        manifest: str | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        if source not in TENSOR_SOURCES + FOLDER_SOURCES:
            raise ValueError(
                f"data.source must be one of {TENSOR_SOURCES + FOLDER_SOURCES}, got {source!r}"
            )
        if (source == "manifest") != bool(manifest):
            raise ValueError(
                "data.manifest=PATH goes with data.source=manifest (and only with it); got "
                f"source={source!r}, manifest={manifest!r}"
            )
        self.source_name = source
        self.manifest = manifest
        self.data_dir = Path(data_dir)
        self.val_dir = val_dir
        self.use_labels = use_labels
        self.image_size = image_size
        self.subset = subset
        self.download = download
        self.crops = _merge(CROP_DEFAULTS, crops, "crops")
        self.masking = _merge(MASK_DEFAULTS, masking, "masking")
        self.eval_cfg = _merge(EVAL_DEFAULTS, eval, "eval")
        self.eval_cfg["crop_size"] = self.eval_cfg["crop_size"] or self.crops["global_size"]
        self._check_sizes(patch_size)
        self.patch_size = patch_size
        self.transform = MultiCropTransform(
            global_size=self.crops["global_size"],
            local_size=self.crops["local_size"],
            global_scale=tuple(self.crops["global_scale"]),
            local_scale=tuple(self.crops["local_scale"]),
            n_local=self.crops["n_local"],
            blur_mode=self.crops["blur_mode"],
            color_jitter_p=self.crops["color_jitter_p"],
            grayscale_p=self.crops["grayscale_p"],
            patch_size=patch_size,
        )
        self.collate = self._build_collate()
        self._train_source: ImageSource | None = None
        self._val_source: ImageSource | None = None

    def _check_sizes(self, patch_size: int) -> None:
        """Crop sizes must be multiples of the patch size, with at least a 2x2 global grid."""
        g, loc, p = self.crops["global_size"], self.crops["local_size"], patch_size
        if g < 2 * p:
            raise ValueError(
                f"data.crops.global_size={g} is too small for patch size {p}: the global crop "
                f"needs at least a 2x2 patch grid (>= {2 * p} px, a multiple of {p})"
            )
        if self.crops["n_local"] and loc < p:
            raise ValueError(
                f"data.crops.local_size={loc} is smaller than the patch size {p}; use a multiple "
                f"of {p} (e.g. {p * max(1, g // p // 2)})"
            )
        for name, size in (("global_size", g), ("local_size", loc)):
            if size % p:
                raise ValueError(
                    f"data.crops.{name}={size} is not a multiple of the patch size {p}"
                )

    def _build_collate(self) -> SeededMultiCropCollate:
        m = self.masking
        grid = self.crops["global_size"] // self.patch_size
        generator = BlockMaskGenerator(
            grid,
            min_num_patches=m["min_num_patches"],
            max_num_patches=m["max_patch_fraction"] * grid * grid,
            min_aspect=m["min_aspect"],
        )
        return SeededMultiCropCollate(
            generator, m["probability"], tuple(m["ratio_range"]), seed=self.seed
        )

    # ------------------------------------------------------------------ sources
    def prepare_data(self) -> None:
        if self.download and self.source_name in TORCHVISION_DATASETS:
            for train in (True, False):
                load_image_tensors(self.source_name, self.data_dir, train, download=True)

    def _tensor_source(self, train: bool) -> TensorImageSource:
        images, labels = load_image_tensors(self.source_name, self.data_dir, train=train)
        if self.image_size and images.shape[-1] != self.image_size:
            size = (self.image_size, self.image_size)
            resized = F.interpolate(images.float(), size=size, mode="bilinear", antialias=True)
            images = resized.round_().clamp_(0, 255).to(torch.uint8)
        return TensorImageSource(images, labels)

    def setup(self, stage: str | None = None) -> None:
        if self._train_source is not None:
            return
        if self.source_name in TENSOR_SOURCES:
            self._train_source = self._tensor_source(train=True)
        elif self.source_name == "manifest":
            self._train_source = ManifestSource(self.manifest, self.data_dir)
        else:
            layout = "tree" if self.source_name == "image_folder" else "flat"
            self._train_source = ImageFolderSource(self.data_dir, layout, self.use_labels)

    def _train_images(self) -> Dataset:
        self.setup()
        return _spread_subset(MultiCropDataset(self._train_source, self.transform), self.subset)

    def train_dataloader(self) -> DataLoader:
        # Reuse the base loader's resumable sampler; only the collate differs.
        base = self._loader(self._train_images(), train=True)
        return DataLoader(
            base.dataset,
            batch_size=self.batch_size,
            sampler=base.sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            drop_last=True,
            collate_fn=self.collate,
        )

    # ------------------------------------------------------------------ evaluation
    @property
    def num_classes(self) -> int:
        """Number of classes of the labelled evaluation data."""
        self.setup()
        if self.source_name in TENSOR_SOURCES:
            return int(self._train_source.labels.max()) + 1
        return len(getattr(self._train_source, "classes", []))

    def _eval_dataset(self, source: ImageSource, subset: int | None) -> Dataset:
        transform = build_eval_transform(self.eval_cfg["crop_size"], self.eval_cfg["resize_ratio"])
        return _spread_subset(LabelledEvalDataset(source, transform), subset)

    def knn_train_dataset(self) -> Dataset:
        """Labelled training images, eval transform: ``(image (3, S, S), label)``."""
        self.setup()
        return self._eval_dataset(self._train_source, self.eval_cfg["train_subset"])

    def knn_val_dataset(self) -> Dataset:
        """Labelled held-out images (test split, or ``val_dir``), eval transform."""
        if self._val_source is None:
            if self.source_name in TENSOR_SOURCES:
                self._val_source = self._tensor_source(train=False)
            elif self.val_dir:
                self._val_source = ImageFolderSource(self.val_dir, "tree", use_labels=True)
            else:
                raise ValueError(
                    f"data.source={self.source_name} has no held-out images: set data.val_dir "
                    "to a labelled ImageFolder tree"
                )
        return self._eval_dataset(self._val_source, self.eval_cfg["val_subset"])

    def _eval_loader(self, dataset: Dataset) -> DataLoader:
        return DataLoader(
            dataset, batch_size=self.eval_cfg["batch_size"], shuffle=False,
            num_workers=self.num_workers,
        )  # fmt: skip

    def knn_train_dataloader(self) -> DataLoader:
        return self._eval_loader(self.knn_train_dataset())

    def knn_val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.knn_val_dataset())


def _spread_subset(dataset: Dataset, n: int | None) -> Dataset:
    """``n`` evenly spaced items (every class of a sorted folder tree is kept); None: all."""
    if not n or n >= len(dataset):
        return dataset
    indices = torch.linspace(0, len(dataset) - 1, n).round().long().tolist()
    return _KeyedSubset(dataset, indices)


class _KeyedSubset(Subset):
    """A ``Subset`` that also forwards ``(index, seed)`` keys of the multi-crop dataset."""

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        if isinstance(key, tuple):
            index, seed = key
            return self.dataset[(self.indices[index], seed)]
        return self.dataset[self.indices[key]]

    def __getitems__(self, keys: list) -> list:
        return [self[key] for key in keys]
