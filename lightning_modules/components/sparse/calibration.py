"""Calibration images for layer-wise pruning: validation and re-iterable batches (spec §2.8)."""

from collections.abc import Callable, Iterable, Iterator

import torch


def _images_of(batch: object) -> torch.Tensor:
    """The image tensor of a batch: the tensor itself, or the first item of a tuple/list."""
    if isinstance(batch, list | tuple):
        batch = batch[0]
    if not isinstance(batch, torch.Tensor):
        raise TypeError(
            f"calibration batches must be tensors or (images, ...) tuples, got {type(batch)}"
        )
    return batch


def check_images(images: torch.Tensor, expected: tuple[int, ...], net_name: str) -> None:
    """Raise a ValueError naming the expected (N, C, H, W) and the received shape."""
    if images.dim() != 4 or tuple(images.shape[1:]) != tuple(expected):
        want = "(N, " + ", ".join(str(v) for v in expected) + ")"
        raise ValueError(
            f"calibration images for {net_name} must have shape {want}; got {tuple(images.shape)}"
        )
    if images.shape[0] == 0:
        raise ValueError("calibration set is empty")


def calibration_batches(
    calib: torch.Tensor | Iterable,
    expected: tuple[int, ...],
    net_name: str,
    batch_size: int,
    like: torch.Tensor,
) -> tuple[Callable[[], Iterator[torch.Tensor]], int]:
    """A callable yielding validated image batches (dtype/device of ``like``) and the image count.

    Args:
        calib: a (N, C, H, W) tensor, or a re-iterable of batches (e.g. a DataLoader without
            shuffling, so every layer sees the same images).
        expected: (C, H, W) the network takes.
    """
    if isinstance(calib, torch.Tensor):
        check_images(calib, expected, net_name)
        n_images = calib.shape[0]

        def from_tensor() -> Iterator[torch.Tensor]:
            for start in range(0, n_images, batch_size):
                yield calib[start : start + batch_size].to(like)

        return from_tensor, n_images

    def from_iterable() -> Iterator[torch.Tensor]:
        for batch in calib:
            images = _images_of(batch)
            check_images(images, expected, net_name)
            yield images.to(like)

    dataset = getattr(calib, "dataset", None)
    n_images = len(dataset) if dataset is not None else sum(b.shape[0] for b in from_iterable())
    return from_iterable, n_images
