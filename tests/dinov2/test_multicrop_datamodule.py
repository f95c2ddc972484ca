"""MultiCropDataModule: sources, batch layout, deterministic (resumable) crops and masks, eval loaders."""

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import has_real_data
from PIL import Image

from datamodules.curation.manifest import Manifest, write_manifest
from datamodules.multicrop_datamodule import MultiCropDataModule

CROPS = {"global_size": 16, "local_size": 8, "n_local": 2}


def _dm(source: str = "digits", data_dir: str = ".", **kwargs) -> MultiCropDataModule:
    defaults = {"batch_size": 4, "patch_size": 4, "crops": CROPS, "image_size": 16, "seed": 3}
    return MultiCropDataModule(source, data_dir, **{**defaults, **kwargs})


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_digits_batch_layout() -> None:
    dm = _dm(subset=12)
    batch = next(iter(dm.train_dataloader()))
    assert batch["global_crops"].shape == (8, 3, 16, 16)
    assert batch["local_crops"].shape == (8, 3, 8, 8)
    assert batch["masks"].shape == (8, 16) and batch["masks"].dtype == torch.bool
    assert batch["masks"].any(dim=1).sum() <= 4  # half of the 2B global crops at most
    assert batch["n_masked"] == batch["mask_indices"].numel() == batch["mask_weights"].numel()
    assert batch["labels"].shape == (4,)


def test_batches_are_functions_of_seed_epoch_and_position() -> None:
    """Fresh datamodules give equal batches; a mid-epoch resume gives the remaining ones."""
    first = list(itertools.islice(_dm(subset=16).train_dataloader(), 4))
    again = list(itertools.islice(_dm(subset=16).train_dataloader(), 4))
    assert all(_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0]["masks"], first[1]["masks"])
    resumed = _dm(subset=16)
    resumed.load_state_dict({"epoch": 0, "consumed_batches": 2})
    tail = list(resumed.train_dataloader())
    assert len(tail) == 2 and all(_equal(a, b) for a, b in zip(first[2:], tail, strict=True))
    other_seed = next(iter(_dm(subset=16, seed=4).train_dataloader()))
    assert not torch.equal(other_seed["global_crops"], first[0]["global_crops"])


def test_workers_give_the_same_batches() -> None:
    base = next(iter(_dm(subset=8).train_dataloader()))
    with_workers = next(iter(_dm(subset=8, num_workers=1).train_dataloader()))
    assert _equal(base, with_workers)


def test_too_small_or_misaligned_crops_error_clearly() -> None:
    with pytest.raises(ValueError, match="global_size=4 is too small for patch size 4"):
        _dm(crops={**CROPS, "global_size": 4})
    with pytest.raises(ValueError, match="local_size=2 is smaller than the patch size 4"):
        _dm(crops={**CROPS, "local_size": 2})
    with pytest.raises(ValueError, match="not a multiple of the patch size 14"):
        _dm(patch_size=14, crops={"global_size": 224, "local_size": 96})
    with pytest.raises(ValueError, match="unknown data.crops keys"):
        _dm(crops={**CROPS, "local_crops": 8})


def test_eval_loaders_are_labelled_and_deterministic() -> None:
    dm = _dm(eval={"batch_size": 50, "val_subset": 60})
    images, labels = next(iter(dm.knn_train_dataloader()))
    assert images.shape == (50, 3, 16, 16) and labels.dtype == torch.int64
    assert len(dm.knn_train_dataset()) == 1437 and len(dm.knn_val_dataset()) == 60
    assert dm.num_classes == 10
    again, _ = next(iter(dm.knn_train_dataloader()))
    assert torch.equal(images, again)


def _write_images(folder: Path, n: int, color: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (20, 24), (color, i * 10, 0)).save(folder / f"{i}.png")


def test_image_folder_tree_and_flat_folder(tmp_path: Path) -> None:
    _write_images(tmp_path / "tree" / "cat", 3, 10)
    _write_images(tmp_path / "tree" / "dog" / "nested", 2, 200)
    _write_images(tmp_path / "flat", 5, 50)
    tree = _dm(
        "image_folder", str(tmp_path / "tree"), image_size=None, val_dir=str(tmp_path / "tree")
    )
    batch = next(iter(tree.train_dataloader()))
    assert batch["global_crops"].shape == (8, 3, 16, 16) and batch["labels"].tolist()
    assert tree.num_classes == 2 and len(tree.knn_val_dataset()) == 5
    assert sorted(label for _, label in tree.knn_train_dataset()) == [0, 0, 0, 1, 1]
    unlabelled = _dm("image_folder", str(tmp_path / "tree"), use_labels=False)
    assert "labels" not in next(iter(unlabelled.train_dataloader()))
    flat = _dm("flat_folder", str(tmp_path / "flat"))
    assert "labels" not in next(iter(flat.train_dataloader()))
    with pytest.raises(ValueError, match="labelled"):
        flat.knn_train_dataset()
    with pytest.raises(ValueError, match="set data.val_dir"):
        flat.knn_val_dataset()


@pytest.mark.skipif(not has_real_data("FashionMNIST"), reason="needs Fashion-MNIST under DATA_DIR")
def test_fashion_mnist_source() -> None:
    import os

    dm = _dm("fashion_mnist", os.environ["DATA_DIR"], subset=8, image_size=16)
    batch = next(iter(dm.train_dataloader()))
    assert batch["global_crops"].shape == (8, 3, 16, 16)
    assert len(dm.knn_val_dataset()) == 10_000


def _write_manifest(tmp_path: Path, with_noise: bool) -> Path:
    """Three labelled 20x20 arrays (npy source) and, optionally, two rows of a noise source."""
    images = torch.randint(0, 256, (3, 1, 20, 20), dtype=torch.uint8).numpy()
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "labels.npy", np.array([4, 5, 6]))
    sources = {"arrays": {"kind": "npy", "path": str(tmp_path / "images.npy"),
                          "labels": str(tmp_path / "labels.npy")},
               "noise": {"kind": "noise", "count": 4, "shape": [3, 24, 24], "seed": 0}}  # fmt: skip
    rows = [("arrays", 2), ("arrays", 0), ("arrays", 1)] + [("noise", 3), ("noise", 0)] * with_noise
    names, index = zip(*rows, strict=True)
    return write_manifest(tmp_path / "curated.csv", Manifest(sources, list(names), list(index)))


def test_manifest_source(tmp_path: Path) -> None:
    """A curation manifest trains on the rows it lists; labels only when every row has one."""
    path = str(_write_manifest(tmp_path, with_noise=False))
    labelled = _dm("manifest", ".", manifest=path, batch_size=2)
    batch = next(iter(labelled.train_dataloader()))
    assert batch["global_crops"].shape == (4, 3, 16, 16) and batch["local_crops"].shape[0] == 4
    assert set(batch["labels"].tolist()) <= {4, 5, 6}
    assert [label for _, label in labelled.knn_train_dataset()] == [6, 4, 5]  # manifest order
    mixed = _dm("manifest", ".", manifest=str(_write_manifest(tmp_path, with_noise=True)))
    batch = next(iter(mixed.train_dataloader()))  # 5 rows, batch 4: grayscale and RGB rows
    assert batch["global_crops"].shape == (8, 3, 16, 16) and "labels" not in batch
    with pytest.raises(ValueError, match="labelled"):
        mixed.knn_train_dataset()
    with pytest.raises(ValueError, match="data.manifest=PATH goes with data.source=manifest"):
        _dm("manifest", ".")
