"""ManifestImageSource yields the images of a manifest; CuratedDataModule batches them."""

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SHARED_DATA, has_real_data

from datamodules.curated_datamodule import CuratedDataModule, ManifestImageSource
from datamodules.curation.errors import CurationError
from datamodules.curation.manifest import Manifest, write_manifest
from datamodules.curation.sources import NoiseSource


def _manifest(tmp_path: Path) -> Manifest:
    planted = np.arange(3 * 32 * 32, dtype=np.int64).reshape(3, 1, 32, 32).astype(np.uint8)
    np.save(tmp_path / "planted.npy", planted)
    np.save(tmp_path / "labels.npy", np.array([7, 8, 9]))
    sources = {
        "planted": {"kind": "npy", "path": str(tmp_path / "planted.npy"),
                    "labels": str(tmp_path / "labels.npy")},
        "noise": {"kind": "noise", "count": 5, "shape": [1, 28, 28], "seed": 1},
    }  # fmt: skip
    return Manifest(sources, ["planted", "noise", "planted", "noise"], [2, 4, 0, 1], "x")


def test_dataset_yields_images_and_labels(tmp_path: Path) -> None:
    ds = ManifestImageSource(write_manifest(tmp_path / "m.csv", _manifest(tmp_path)))
    image, label = ds[0]
    assert image.dtype == torch.uint8 and image.shape == (1, 32, 32) and label == 9
    assert torch.equal(image, torch.from_numpy(np.load(tmp_path / "planted.npy")[2]))
    noise, label = ds[1]
    assert label == -1 and torch.equal(noise, NoiseSource(5, (1, 28, 28), seed=1).load(4))
    assert "noise[4]" in ds.describe(1)


def test_transform_gets_a_seeded_generator_for_seeded_keys(tmp_path: Path) -> None:
    def transform(image, generator=None):
        return torch.randint(0, 1000, (1,), generator=generator) if generator else image

    ds = ManifestImageSource(_manifest(tmp_path), transform=transform)
    assert torch.equal(ds[(1, 123)][0], ds[(1, 123)][0])
    assert ds[1][0].shape == (1, 28, 28)


def test_index_beyond_the_source_is_a_clear_error(tmp_path: Path) -> None:
    m = _manifest(tmp_path)
    m.index[1] = 5
    with pytest.raises(CurationError, match=r"noise\[5\].*only 5 images"):
        ManifestImageSource(m)


def test_datamodule_batches_mixed_sizes(tmp_path: Path) -> None:
    path = write_manifest(tmp_path / "m.csv", _manifest(tmp_path))
    dm = CuratedDataModule(str(path), batch_size=2, image_size=28)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 2
    images, _ = batches[0]
    assert images.shape == (2, 1, 28, 28) and images.dtype == torch.uint8
    assert sorted(torch.cat([b[1] for b in batches]).tolist()) == [-1, -1, 7, 9]


@pytest.mark.skipif(not has_real_data("MNIST"), reason="needs MNIST under DATA_DIR")
def test_torchvision_source_gives_the_dataset_label() -> None:
    spec = {"mnist": {"kind": "torchvision", "dataset": "mnist", "train": False}}
    ds = ManifestImageSource(Manifest(spec, ["mnist"], [0]), data_dir=SHARED_DATA)
    image, label = ds[0]
    assert image.shape == (1, 28, 28) and label == 7  # the first MNIST test digit is a 7


def test_grayscale_is_repeated_to_the_requested_channels(tmp_path: Path) -> None:
    ds = ManifestImageSource(_manifest(tmp_path), channels=3)
    image, _ = ds[0]
    assert image.shape == (3, 32, 32)
    assert torch.equal(image[0], image[2]) and torch.equal(image[1], ds.load(0)[1])


def test_colour_image_cannot_become_one_channel(tmp_path: Path) -> None:
    np.save(tmp_path / "rgb.npy", np.zeros((1, 3, 8, 8), np.uint8))
    spec = {"rgb": {"kind": "npy", "path": str(tmp_path / "rgb.npy")}}
    ds = ManifestImageSource(Manifest(spec, ["rgb"], [0]), channels=1)
    with pytest.raises(CurationError, match=r"rgb\[0\].*3 channels"):
        ds[0]
