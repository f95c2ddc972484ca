"""The Fashion-MNIST kNN benchmark's ``--val`` mode queries held-out train images, not the test split."""

import torch
from torch import nn

from datamodules.components.labelled_features import build_labelled_splits
from experiments.benchmarks.dinov2_fashionmnist_knn import HeldOutTrainKNN, parse_args


def test_held_out_knn_queries_the_val_split_not_the_test_split() -> None:
    callback = HeldOutTrainKNN(
        dataset="digits", data_dir="unused", image_size=16, train_size=200, val_size=100,
        test_size=50, every_n_epochs=None, seed=3,
    )  # fmt: skip
    splits = callback.splits(nn.Identity())
    reference = build_labelled_splits("digits", "unused", 16, 200, 100, 50, seed=3)
    assert len(splits["test"]) == 100 and len(splits["train"]) == 200
    assert torch.equal(splits["test"].images, reference["val"].images)
    assert torch.equal(splits["test"].labels, reference["val"].labels)
    assert torch.equal(splits["train"].images, reference["train"].images)


def test_val_flag_defaults_to_the_test_split() -> None:
    assert parse_args([]).val == 0
    args = parse_args(["--steps", "400", "--val", "5000", "model.koleo.weight=0.0"])
    assert (args.steps, args.val, args.overrides) == (400, 5000, ["model.koleo.weight=0.0"])
