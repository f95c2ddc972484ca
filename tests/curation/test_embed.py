"""Embedding: normalised memory-mapped output in input order; unreadable images skipped."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from datamodules.curated_datamodule import ManifestImageSource
from datamodules.curation.embed import PixelEmbedder, ResizeNormalize, embed_images, load_embeddings
from datamodules.curation.errors import CurationError
from datamodules.curation.manifest import Manifest
from lightning_modules.components.vit import DINOv2Backbone

TRAINER = {"accelerator": "cpu", "devices": 1}


def _folder(tmp_path: Path, n_good: int = 5, bad: tuple[int, ...] = (2,)) -> ManifestImageSource:
    """An image folder of PNGs, some of them corrupt, and a manifest listing all of them."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n_good + len(bad)):
        path = folder / f"img{i:02d}.png"
        if i in bad:
            path.write_bytes(b"not a png at all")
        else:
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(path)
    n = n_good + len(bad)
    manifest = Manifest({"web": {"kind": "folder", "path": str(folder)}}, ["web"] * n, range(n))
    return ManifestImageSource(manifest)


def test_unreadable_image_named_in_warning_and_skipped(tmp_path: Path) -> None:
    images = _folder(tmp_path)
    out = tmp_path / "embed"
    out.mkdir()
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable images: .*img02\.png"):
        meta = embed_images(PixelEmbedder(4), images, out, ResizeNormalize(16), 4, 0, TRAINER)
    assert meta["unreadable"] == 1 and meta["count"] == 5 and meta["dim"] == 48
    assert "img02.png" in meta["unreadable_images"][0]
    emb = load_embeddings(out)
    assert isinstance(emb.vectors, np.memmap) and emb.vectors.dtype == np.float32
    assert emb.rows.tolist() == [0, 1, 3, 4, 5]
    assert emb.index.keys() == [("web", i) for i in (0, 1, 3, 4, 5)]
    np.testing.assert_allclose(np.linalg.norm(emb.vectors, axis=1), 1.0, atol=1e-5)


def test_embeddings_equal_the_backbone_in_input_order(tmp_path: Path) -> None:
    images = ManifestImageSource(
        Manifest({"n": {"kind": "noise", "count": 11, "shape": [1, 28, 28]}}, ["n"] * 11, range(11))
    )
    torch.manual_seed(0)
    backbone = DINOv2Backbone(img_size=28, patch_size=4, embed_dim=32, depth=1, num_heads=2)
    transform = ResizeNormalize(28)
    meta = embed_images(backbone, images, tmp_path, transform, batch_size=4, trainer_kwargs=TRAINER)
    assert meta["count"] == 11 and meta["unreadable"] == 0
    with torch.no_grad():
        x = torch.stack([transform(images.load(i)) for i in range(11)])
        expected = F.normalize(backbone.eval()(x), dim=-1).numpy()
    np.testing.assert_allclose(load_embeddings(tmp_path).vectors, expected, atol=1e-5)


def test_empty_manifest_is_a_clear_error(tmp_path: Path) -> None:
    images = ManifestImageSource(Manifest({}, [], []))
    with pytest.raises(CurationError, match="no images to embed"):
        embed_images(nn.Identity(), images, tmp_path, ResizeNormalize(8))


def test_all_unreadable_is_a_clear_error(tmp_path: Path) -> None:
    images = _folder(tmp_path, n_good=0, bad=(0, 1))
    with pytest.raises(CurationError, match="all 2 images are unreadable"):
        embed_images(PixelEmbedder(2), images, tmp_path, ResizeNormalize(8), 4, 0, TRAINER)


@pytest.mark.slow
def test_two_process_ddp_equals_one_process(tmp_path: Path) -> None:
    n = 13  # odd: the ranks get unequal shares
    spec = {"n": {"kind": "noise", "count": n, "shape": [1, 28, 28]}}
    images = ManifestImageSource(Manifest(spec, ["n"] * n, range(n)))
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    embed_images(PixelEmbedder(4), images, one, ResizeNormalize(28), 3, 0, TRAINER)
    ddp = {"accelerator": "cpu", "devices": 2, "strategy": "ddp_spawn"}
    meta = embed_images(PixelEmbedder(4), images, two, ResizeNormalize(28), 3, 0, ddp)
    assert meta["count"] == n
    a, b = load_embeddings(one), load_embeddings(two)
    assert np.array_equal(b.rows, np.arange(n))
    np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-6)
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
