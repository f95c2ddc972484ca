"""Embed images with any backbone: L2-normalised float32 rows in a memory-mapped ``.npy``.

``embed_images`` runs Lightning ``predict`` on a thin wrapper, so it is batched and runs on
CPU, one GPU or DDP (each rank embeds its share; rank 0 merges the shares in input order).
Unreadable images are skipped, named in a warning and counted in the stage metadata.

Outputs in ``out_dir``: ``embeddings.npy`` ``(N, D)`` float32, ``rows.npy`` ``(N,)`` (row of
each embedding in the input manifest), ``index.csv`` (+ ``index.sources.json``): the
``(source, index, reason)`` of every embedded image, a manifest in row order, and
``unreadable.json``: ``[row, message]`` of every skipped image.
"""

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from datamodules.curation.errors import CurationError
from datamodules.curation.manifest import Manifest, read_manifest, write_manifest
from datamodules.curation.sources import UnreadableImageError
from datamodules.curation.stages import read_done

MAX_NAMED = 20  # unreadable images named in the warning
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageRows(Protocol):
    """What ``embed_images`` reads: a manifest and its images (``ManifestImageSource``)."""

    manifest: Manifest

    def __len__(self) -> int: ...
    def load(self, row: int) -> torch.Tensor: ...
    def describe(self, row: int) -> str: ...


class ResizeNormalize:
    """uint8 ``(C, H, W)`` → float32 ``(3, size, size)``: resize, grey → RGB, normalise."""

    def __init__(
        self,
        image_size: int,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
    ) -> None:
        self.image_size = image_size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        x = image.float().div(255.0)
        if x.shape[0] == 1:
            x = x.expand(3, -1, -1)
        if x.shape[-2:] != (self.image_size, self.image_size):
            size = (self.image_size, self.image_size)
            x = F.interpolate(x[None], size=size, mode="bilinear", antialias=True)[0]
        return (x - self.mean) / self.std


class PixelEmbedder(nn.Module):
    """A training-free copy-detection baseline: mean-centred, average-pooled pixels.

    Images ``(B, C, H, W)`` → ``(B, C·size²)``; robust to brightness offsets (centring) and,
    through the pooling, to small shifts.
    """

    def __init__(self, size: int = 8) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(x, self.size).flatten(1)
        return pooled - pooled.mean(dim=1, keepdim=True)


class EmbeddingPredictor(L.LightningModule):
    """``predict_step``: images → L2-normalised float32 embeddings of ``backbone``."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        images = batch["images"]
        if len(images) == 0:
            emb = torch.zeros(0, 0)
        else:
            emb = self.backbone(images)
            if emb.ndim != 2:
                raise CurationError(f"the backbone must return (B, D), got {tuple(emb.shape)}")
            emb = F.normalize(emb.float(), dim=-1)
        return {"rows": batch["rows"], "embeddings": emb.cpu(), "bad": batch["bad"]}


class _RowImages(Dataset):
    def __init__(self, images: ImageRows, transform) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, row: int) -> tuple[int, torch.Tensor | None, str]:
        try:
            return row, self.transform(self.images.load(row)), ""
        except UnreadableImageError as err:
            return row, None, f"{self.images.describe(row)}: {err}"


def _collate(items: list[tuple[int, torch.Tensor | None, str]]) -> dict[str, Any]:
    good = [(r, x) for r, x, _ in items if x is not None]
    images = torch.stack([x for _, x in good]) if good else torch.zeros(0)
    return {
        "rows": torch.tensor([r for r, _ in good], dtype=torch.int64),
        "images": images,
        "bad": [(r, msg) for r, _, msg in items if msg],
    }


class EmbeddingWriter(L.Callback):
    """Collects this rank's predictions; at the end, rank 0 merges every rank's share."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.rows: list[np.ndarray] = []
        self.embeddings: list[np.ndarray] = []
        self.bad: list[tuple[int, str]] = []

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if len(outputs["rows"]):
            self.rows.append(outputs["rows"].numpy())
            self.embeddings.append(outputs["embeddings"].numpy())
        self.bad.extend(outputs["bad"])

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        share = self.out_dir / f"share{trainer.global_rank}"
        dim = self.embeddings[0].shape[1] if self.embeddings else 0
        np.save(f"{share}.rows.npy", np.concatenate(self.rows) if self.rows else np.zeros(0, int))
        np.save(f"{share}.emb.npy", np.concatenate(self.embeddings) if self.embeddings else
                np.zeros((0, dim), np.float32))  # fmt: skip
        Path(f"{share}.bad.json").write_text(json.dumps(self.bad))
        trainer.strategy.barrier("embeddings_written")
        if trainer.is_global_zero:
            _merge_shares(self.out_dir, trainer.world_size)
        trainer.strategy.barrier("embeddings_merged")


def _merge_shares(out_dir: Path, world_size: int) -> None:
    """The ranks' shares → ``embeddings.npy``, ``rows.npy`` (input-row order), ``unreadable.json``.

    Everything goes through files, so this also works when the ranks were spawned processes.
    """
    shares = [out_dir / f"share{r}" for r in range(world_size)]
    rows = np.concatenate([np.load(f"{s}.rows.npy") for s in shares]).astype(np.int64)
    parts = [np.load(f"{s}.emb.npy", mmap_mode="r") for s in shares]
    dims = {p.shape[1] for p in parts if len(p)}
    bad = [tuple(b) for s in shares for b in json.loads(Path(f"{s}.bad.json").read_text())]
    if not dims:
        raise CurationError(f"no image could be read: all {len(bad)} images are unreadable")
    (dim,) = dims
    order = np.argsort(rows, kind="stable")
    out = np.lib.format.open_memmap(out_dir / "embeddings.npy", "w+", np.float32, (len(rows), dim))
    offset = 0
    position = np.empty_like(order)
    position[order] = np.arange(len(order))
    for part in parts:  # scatter each share into its sorted positions
        out[position[offset : offset + len(part)]] = part
        offset += len(part)
    out.flush()
    if not np.isfinite(out).all():
        raise CurationError("the backbone produced non-finite embeddings (NaN or inf)")
    np.save(out_dir / "rows.npy", rows[order])
    (out_dir / "unreadable.json").write_text(json.dumps(sorted(bad)))
    for s in shares:
        for suffix in (".rows.npy", ".emb.npy", ".bad.json"):
            Path(f"{s}{suffix}").unlink()


def embed_images(
    backbone: nn.Module,
    images: ImageRows,
    out_dir: str | Path,
    transform,
    batch_size: int = 256,
    num_workers: int = 0,
    trainer_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Embed every readable image of ``images`` into ``out_dir``; returns the stage metadata.

    Args:
        backbone: any module mapping a batch ``(B, 3, S, S)`` to features ``(B, D)``.
        transform: uint8 ``(C, H, W)`` → float ``(3, S, S)``, e.g. :class:`ResizeNormalize`.
        trainer_kwargs: ``lightning.Trainer`` arguments (accelerator, devices, precision, ...).
    """
    out_dir = Path(out_dir)
    if len(images) == 0:
        raise CurationError("there are no images to embed: the manifest is empty")
    loader = DataLoader(
        _RowImages(images, transform), batch_size=batch_size, num_workers=num_workers,
        collate_fn=_collate,
    )  # fmt: skip
    writer = EmbeddingWriter(out_dir)
    quiet = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
             "enable_model_summary": False}  # fmt: skip
    trainer = L.Trainer(callbacks=[writer], **{**quiet, **(trainer_kwargs or {})})
    trainer.predict(EmbeddingPredictor(backbone), loader, return_predictions=False)
    if not trainer.is_global_zero:
        return {}
    rows = np.load(out_dir / "rows.npy")
    write_manifest(out_dir / "index.csv", images.manifest.select(rows))
    bad = json.loads((out_dir / "unreadable.json").read_text())
    if bad:
        named = "; ".join(msg for _, msg in bad[:MAX_NAMED])
        more = f" (and {len(bad) - MAX_NAMED} more)" if len(bad) > MAX_NAMED else ""
        warnings.warn(f"skipped {len(bad)} unreadable images: {named}{more}", stacklevel=2)
    return {
        "count": len(rows),
        "dim": int(np.load(out_dir / "embeddings.npy", mmap_mode="r").shape[1]),
        "unreadable": len(bad),
        "unreadable_images": [msg for _, msg in bad[:1000]],
    }


@dataclass(frozen=True)
class Embeddings:
    """A finished embedding stage: ``vectors (N, D)`` memory-mapped, ``rows (N,)``, ``index``.

    ``rows[i]`` is the input-manifest row of embedding ``i``; ``index`` the manifest of the
    embedded images in embedding order; ``meta`` the stage's ``done.json`` (empty if absent).
    """

    vectors: np.ndarray
    rows: np.ndarray
    index: Manifest
    meta: dict[str, Any]

    def __len__(self) -> int:
        return len(self.vectors)


def load_embeddings(stage_dir: str | Path) -> Embeddings:
    """Open the outputs of :func:`embed_images` (the vectors memory-mapped, read-only)."""
    stage_dir = Path(stage_dir)
    vectors = np.load(stage_dir / "embeddings.npy", mmap_mode="r")
    rows, index = np.load(stage_dir / "rows.npy"), read_manifest(stage_dir / "index.csv")
    return Embeddings(vectors, rows, index, read_done(stage_dir) or {})
