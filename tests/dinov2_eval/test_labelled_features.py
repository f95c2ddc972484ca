"""Labelled eval sets: the spec §9 eval transform, grayscale → RGB, disjoint seeded subsets."""

import pytest
import torch

from datamodules.components.image_tensors import load_image_tensors
from datamodules.components.labelled_features import (
    build_labelled_splits,
    eval_transform_batch,
    resize_crop_batch,
)
from datamodules.components.multicrop_transforms import build_eval_transform


def test_batched_transform_equals_the_per_image_eval_transform() -> None:
    gen = torch.Generator().manual_seed(0)
    for channels in (1, 3):
        images = torch.randint(0, 256, (5, channels, 28, 28), dtype=torch.uint8, generator=gen)
        batched = eval_transform_batch(images, 16, chunk_size=2)
        single = torch.stack([build_eval_transform(16)(im) for im in images])
        assert batched.shape == (5, 3, 16, 16)
        torch.testing.assert_close(batched, single)


def test_digits_splits_are_disjoint_seeded_and_sized() -> None:
    splits = build_labelled_splits("digits", "unused", 16, train_size=100, val_size=0.1,
                                   test_size=50, seed=3)  # fmt: skip
    assert {k: len(v) for k, v in splits.items()} == {"train": 100, "val": 144, "test": 50}
    assert splits["train"].images.shape == (100, 1, 16, 16)  # uint8, grayscale kept
    assert next(splits["train"].batches(64)).shape == (64, 3, 16, 16)
    all_train, _ = load_image_tensors("digits", "unused", train=True)
    resized = resize_crop_batch(all_train, 16)

    def rows(x):
        return {tuple(r.tolist()) for r in x.flatten(1)}

    assert not rows(splits["train"].images) & rows(splits["val"].images)
    assert rows(splits["train"].images) <= rows(resized)
    again = build_labelled_splits("digits", "unused", 16, 100, 0.1, 50, seed=3)
    assert torch.equal(again["test"].labels, splits["test"].labels)
    with pytest.raises(ValueError, match="no training images"):
        build_labelled_splits("digits", "unused", 16, val_size=5000)
