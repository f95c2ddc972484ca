"""Typed outputs of the detector's stages (spec §2 "Model output"); shapes in every docstring.

B = batch, Q = matching queries, T = text tokens, S = Σ_l h_l·w_l image tokens, L = levels,
d = hidden width, pad = denoising queries. Boxes are normalised cxcywh relative to the
*unpadded* image; logits are raw and finite, masks travel beside them (decision P5).
"""

from dataclasses import dataclass, field

import torch


@dataclass
class ImageFeatures:
    """Flattened multi-scale image tokens (backbone + channel mapper), prompt-independent.

    src: (B, S, d) projected features; pos: (B, S, d) sine + level embedding;
    pad_mask: (B, S) bool, True = padding; spatial_shapes: (L, 2) long (h, w);
    level_start_index: (L,) long; valid_ratios: (B, L, 2) valid (w, h) fraction per level;
    stride4: optional (B, C, H/4, W/4) map for a mask head (None unless requested).
    """

    src: torch.Tensor
    pos: torch.Tensor
    pad_mask: torch.Tensor
    spatial_shapes: torch.Tensor
    level_start_index: torch.Tensor
    valid_ratios: torch.Tensor
    stride4: torch.Tensor | None = None

    def select(self, index: torch.Tensor) -> "ImageFeatures":
        """The features of images ``index`` (K,) (chunked inference reuses one backbone pass)."""
        pick = lambda t: None if t is None else t.index_select(0, index)  # noqa: E731
        return ImageFeatures(
            pick(self.src), pick(self.pos), pick(self.pad_mask), self.spatial_shapes,
            self.level_start_index, pick(self.valid_ratios), pick(self.stride4),
        )  # fmt: skip


@dataclass
class TextMemory:
    """The text stream entering the transformer (after ``feat_map``).

    memory_text: (B, T, d); text_token_mask: (B, T) bool, True = real token;
    position_ids: (B, T) long (restarting per phrase); submask: (B, T, T) bool, True = may attend.
    """

    memory_text: torch.Tensor
    text_token_mask: torch.Tensor
    position_ids: torch.Tensor
    submask: torch.Tensor


@dataclass
class Predictions:
    """One set of predictions: logits (B, N, T) raw, finite; boxes (B, N, 4) cxcywh;
    masks (B, N, h, w) mask logits at stride 4 of the padded batch when a mask head runs."""

    logits: torch.Tensor
    boxes: torch.Tensor
    masks: torch.Tensor | None = None


@dataclass
class DNMeta:
    """Layout of the contrastive-denoising queries (spec §7).

    pad = num_groups · 2 · max_gt queries, prepended to the matching queries. Group g holds
    positives at [2·max_gt·g, 2·max_gt·g + max_gt) and negatives right after; slot j of each
    half is GT j of its image (slots j ≥ G_b are padding without loss).
    """

    pad: int
    num_groups: int
    max_gt: int


@dataclass
class DNOutputs:
    """Denoising predictions of every decoder layer: ``layers[i]`` has (B, pad, T) / (B, pad, 4)."""

    layers: list[Predictions]
    meta: DNMeta


@dataclass
class DetectorOutput:
    """What ``GroundingDetector`` returns.

    logits (B, Q, T) and boxes (B, Q, 4): the last decoder layer.
    aux: the earlier decoder layers, first to second-to-last.
    enc: the encoder's top-Q proposals (boxes undetached), or None.
    dn: denoising outputs of every layer, or None when DN did not run.
    text_token_mask (B, T) bool; hidden (B, Q, d): last layer's normed query states and
    memory (B, S, d) / memory_text (B, T, d): encoder outputs, for extension heads
    (masks, keypoints, object tokens for a language head).
    masks (B, Q, h, w) and keypoints (B, Q, K, 3): filled by optional heads (mask logits at
    stride 4 of the padded batch; keypoint (x, y) normalised to the unpadded image and a
    visibility logit); keypoint_aux: the keypoint head's earlier layers, first to last.
    """

    logits: torch.Tensor
    boxes: torch.Tensor
    aux: list[Predictions] = field(default_factory=list)
    enc: Predictions | None = None
    dn: DNOutputs | None = None
    text_token_mask: torch.Tensor | None = None
    hidden: torch.Tensor | None = None
    memory: torch.Tensor | None = None
    memory_text: torch.Tensor | None = None
    masks: torch.Tensor | None = None
    keypoints: torch.Tensor | None = None
    keypoint_aux: list[torch.Tensor] = field(default_factory=list)

    def layers(self) -> list[Predictions]:
        """Every decoder layer's matching predictions, first to last."""
        return [*self.aux, Predictions(self.logits, self.boxes, self.masks)]
