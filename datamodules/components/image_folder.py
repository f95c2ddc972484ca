"""Image sources for self-supervised data: folders of image files and in-memory uint8 tensors.

A *source* is a sized collection of images with optional labels: ``image(i)`` returns a PIL
image or a uint8 ``(C, H, W)`` tensor, ``label(i)`` an int or None. The multi-crop and eval
datasets wrap a source with a transform.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS

FolderLayout = Literal["auto", "tree", "flat"]


class ImageSource(Protocol):
    has_labels: bool

    def __len__(self) -> int: ...

    def image(self, index: int) -> Image.Image | torch.Tensor: ...

    def label(self, index: int) -> int | None: ...


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMG_EXTENSIONS


class ImageFolderSource:
    """Image files under ``root``: an ImageFolder tree (``root/<class>/**/img``) or a flat folder.

    Args:
        root: the folder.
        layout: ``tree`` (one sub-folder per class, searched recursively), ``flat`` (the images
            directly in ``root``, unlabelled) or ``auto`` (``tree`` when ``root`` has
            sub-folders holding images, else ``flat``).
        use_labels: label images by their class folder (``tree`` only); False ignores them.
    """

    def __init__(
        self, root: str | Path, layout: FolderLayout = "auto", use_labels: bool = True
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist")
        class_dirs = sorted(d for d in self.root.iterdir() if d.is_dir())
        if layout == "auto":
            layout = (
                "tree" if any(any(filter(_is_image, d.rglob("*"))) for d in class_dirs) else "flat"
            )
        if layout == "tree":
            self.classes = [d.name for d in class_dirs]
            items = [
                (p, c)
                for c, d in enumerate(class_dirs)
                for p in sorted(d.rglob("*"))
                if _is_image(p)
            ]
        elif layout == "flat":
            self.classes = []
            items = [(p, -1) for p in sorted(self.root.iterdir()) if _is_image(p)]
        else:
            raise ValueError(f"layout must be auto, tree or flat, got {layout!r}")
        if not items:
            raise FileNotFoundError(
                f"no images ({', '.join(IMG_EXTENSIONS)}) found in {self.root} (layout {layout})"
            )
        self.layout = layout
        self.files = [p for p, _ in items]
        self.targets = [c for _, c in items]
        self.has_labels = layout == "tree" and use_labels

    def __len__(self) -> int:
        return len(self.files)

    def image(self, index: int) -> Image.Image:
        with Image.open(self.files[index]) as img:
            return img.convert("RGB")

    def label(self, index: int) -> int | None:
        return self.targets[index] if self.has_labels else None


class TensorImageSource:
    """uint8 images ``(N, C, H, W)`` in memory (MNIST, CIFAR-10, digits), labels ``(N,)`` or None."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"expected uint8 (N, C, H, W) images, got {images.dtype} {tuple(images.shape)}"
            )
        if labels is not None and len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels
        self.has_labels = labels is not None

    def __len__(self) -> int:
        return len(self.images)

    def image(self, index: int) -> torch.Tensor:
        return self.images[index]

    def label(self, index: int) -> int | None:
        return int(self.labels[index]) if self.labels is not None else None


class MultiCropDataset(Dataset):
    """``dataset[(index, seed)]`` → ``(crops, label or None, seed)``; crops drawn from ``seed`` only.

    ``transform(image, generator)`` is a ``MultiCropTransform``; the seed is passed on so the
    collate can derive the batch's mask RNG from its samples.
    """

    def __init__(self, source: ImageSource, transform: Callable[..., Any]) -> None:
        self.source = source
        self.transform = transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]) -> tuple[dict, int | None, int]:
        index, seed = key
        crops = self.transform(self.source.image(index), torch.Generator().manual_seed(seed))
        return crops, self.source.label(index), seed


class LabelledEvalDataset(Dataset):
    """``dataset[i]`` → ``(image (3, S, S) float, label int)`` through the deterministic eval transform."""

    def __init__(self, source: ImageSource, transform: Callable[[Any], torch.Tensor]) -> None:
        if not source.has_labels:
            raise ValueError("kNN / linear-probe evaluation needs a labelled image source")
        self.source = source
        self.transform = transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.source.image(index)), int(self.source.label(index))
