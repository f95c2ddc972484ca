"""Grounding-DINO-style open-set detector assembled from its parts (spec §2-§7).

Data flow: backbone → channel mapper (``ImageFeatures``, prompt-independent, computed once per
image even with chunked prompts) → ``feat_map`` on the text features (``TextMemory``) → feature
enhancer → language-guided query selection (+ CDN queries when training) → decoder → shared
contrastive head per layer → ``DetectorOutput``. The image path takes only tensors (P10): text
features are computed outside (``TextEncoder``), so precomputed, universal or visual prompts
plug in as a ``TextMemory`` of width d.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lightning_modules.components.detection.denoising import ContrastiveDenoising
from lightning_modules.components.detection.heads import (
    PRIOR_BIAS,
    ContrastiveHead,
    centre_text,
)
from lightning_modules.components.detection.keypoint_head import KeypointHead
from lightning_modules.components.detection.mask_head import MaskHead
from lightning_modules.components.detection.neck import ChannelMapper
from lightning_modules.components.detection.outputs import (
    DetectorOutput,
    DNOutputs,
    ImageFeatures,
    Predictions,
    TextMemory,
)
from lightning_modules.components.detection.prompts import UniversalPrompt
from lightning_modules.components.detection.query_selection import QuerySelection
from lightning_modules.components.detection.transformer import (
    CrossModalityDecoder,
    FeatureEnhancer,
)
from lightning_modules.components.detection.visual_prompt import (
    VisualPromptEncoder,
    VisualPrompts,
)


@dataclass
class DNRequest:
    """What contrastive denoising needs (training only): per image boxes[b] (G_b, 4) cxcywh,
    labels[b] (G_b,) caption indices, num_categories[b] = C_b; a seeded ``generator``; the
    0/1 ``positive_map`` (B, C_max, T) for ``dn.content = "text"``."""

    boxes: list[torch.Tensor]
    labels: list[torch.Tensor]
    num_categories: list[int]
    generator: torch.Generator
    positive_map: torch.Tensor | None = None


def _cfg(value: Mapping[str, Any] | None, defaults: dict[str, Any]) -> dict[str, Any]:
    unknown = set(value or {}) - set(defaults)
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}; expected some of {sorted(defaults)}")
    return {**defaults, **dict(value or {})}


class GroundingDetector(nn.Module):
    """Text-prompted detector; every architectural field is a constructor (config) value.

    Args:
        backbone: module returning multi-scale maps (``backbone.py``).
        text_dim: width of the text encoder's features (384 for MiniLM-L6, 64 for tiny-random).
        d_model, n_heads: transformer width and MSDA/decoder heads.
        layers: {encoder, decoder} layer counts. ffn: {image, text} FFN widths (decoder = image).
        fusion: {width, heads, layer_scale_init, drop_path}. text_heads: text self-attn heads.
        queries: {num, levels, points, content}; content: "static" (learnable content queries,
            GD) or "encoder" (the selected encoder features, ``QuerySelection``).
        class_head: {log_scale_init, bias_init, per_layer, center_text}; center_text: the
            class heads (encoder and decoder) score queries against the text tokens minus their
            caption mean, at the same mean norm (``centre_text``); the decoder's text
            cross-attention and DN see the raw tokens.
        dn: {number, box_noise, label_noise, labelbook, content} or None (no denoising).
        dropout: transformer dropout. grad_checkpoint: recompute encoder layers in backward.
        DINO-X extensions (spec §12), each None = off: universal_prompt ``UniversalPrompt``
        kwargs; visual_prompt ``VisualPromptEncoder`` kwargs (needs the universal prompt);
        mask_head ``MaskHead`` kwargs (needs a stride-4 backbone map); keypoint_head
        ``KeypointHead`` kwargs.
    """

    def __init__(
        self,
        backbone: nn.Module,
        text_dim: int,
        d_model: int = 256,
        n_heads: int = 8,
        layers: Mapping[str, int] | None = None,
        ffn: Mapping[str, int] | None = None,
        fusion: Mapping[str, Any] | None = None,
        text_heads: int = 4,
        queries: Mapping[str, int] | None = None,
        class_head: Mapping[str, Any] | None = None,
        dn: Mapping[str, Any] | None = None,
        dropout: float = 0.0,
        grad_checkpoint: bool = False,
        universal_prompt: Mapping[str, Any] | None = None,
        visual_prompt: Mapping[str, Any] | None = None,
        mask_head: Mapping[str, Any] | None = None,
        keypoint_head: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        layers = _cfg(layers, {"encoder": 6, "decoder": 6})
        ffn = _cfg(ffn, {"image": 2048, "text": 1024})
        fusion = _cfg(
            fusion, {"width": 1024, "heads": 4, "layer_scale_init": 1e-4, "drop_path": 0.1}
        )
        queries = _cfg(queries, {"num": 900, "levels": 4, "points": 4, "content": "static"})
        head = _cfg(
            class_head,
            {"log_scale_init": 0.0, "bias_init": PRIOR_BIAS, "per_layer": False,
             "center_text": False},
        )  # fmt: skip
        self.backbone = backbone
        self.neck = ChannelMapper(backbone.out_channels[-3:], d_model, queries["levels"])
        self.feat_map = nn.Linear(text_dim, d_model)
        nn.init.xavier_uniform_(self.feat_map.weight)
        nn.init.zeros_(self.feat_map.bias)
        self.encoder = FeatureEnhancer(
            layers["encoder"], d_model, n_heads, ffn["image"], ffn["text"], text_heads,
            fusion["width"], fusion["heads"], fusion["layer_scale_init"], fusion["drop_path"],
            queries["levels"], queries["points"], dropout, grad_checkpoint,
        )  # fmt: skip
        self.query_selection = QuerySelection(
            d_model, queries["num"], head["log_scale_init"], head["bias_init"], queries["content"]
        )
        self.decoder = CrossModalityDecoder(
            layers["decoder"], d_model, n_heads, ffn["image"], queries["levels"],
            queries["points"], dropout,
        )  # fmt: skip
        n_heads_cls = layers["decoder"] if head["per_layer"] else 1
        self.class_heads = nn.ModuleList(
            ContrastiveHead(d_model, head["log_scale_init"], head["bias_init"])
            for _ in range(n_heads_cls)
        )
        self.dn = None
        if dn is not None and dn.get("number", 0) > 0:
            self.dn = ContrastiveDenoising(d_model, **dict(dn))
        self.d_model, self.text_dim, self.num_queries = d_model, text_dim, queries["num"]
        self.center_text = bool(head["center_text"])
        if self.center_text and universal_prompt is not None:
            raise ValueError("class_head.center_text needs several text tokens per prompt; "
                             "the universal and visual prompts have one per category")  # fmt: skip
        self._build_extensions(universal_prompt, visual_prompt, mask_head, keypoint_head,
                               n_heads, queries)  # fmt: skip

    def _build_extensions(self, universal_prompt: Mapping[str, Any] | None,
                          visual_prompt: Mapping[str, Any] | None,
                          mask_head: Mapping[str, Any] | None,
                          keypoint_head: Mapping[str, Any] | None, n_heads: int,
                          queries: Mapping[str, int]) -> None:  # fmt: skip
        """The optional DINO-X modules (None when off, so the GD state dict is unchanged)."""
        d, levels, points = self.d_model, queries["levels"], queries["points"]
        self.universal_prompt = (
            UniversalPrompt(d, **dict(universal_prompt)) if universal_prompt is not None else None
        )
        self.visual_prompt = None
        if visual_prompt is not None:
            if self.universal_prompt is None:
                raise ValueError("visual_prompt needs universal_prompt (the encoder's text stream)")
            self.visual_prompt = VisualPromptEncoder(d, n_heads, levels, points,
                                                     **dict(visual_prompt))  # fmt: skip
        self.mask_head = None
        if mask_head is not None:
            channels = self.backbone.out_channels
            if len(channels) != 4:
                raise ValueError(
                    f"mask_head needs a stride-4 backbone map but the backbone returns "
                    f"{len(channels)} maps: set model.detector.backbone.with_stride4=true"
                )
            self.mask_head = MaskHead(channels[0], d, **dict(mask_head))
        self.keypoint_head = None
        if keypoint_head is not None:
            self.keypoint_head = KeypointHead(d, n_heads, levels, points, **dict(keypoint_head))

    @property
    def size_divisibility(self) -> int:
        """Input sides must be multiples of this (pad images to it)."""
        return int(getattr(self.backbone, "size_divisibility", 32))

    def image_features(self, images: torch.Tensor, pad_mask: torch.Tensor) -> ImageFeatures:
        """images (B, 3, H, W) normalised, pad_mask (B, H, W) True = padding → ``ImageFeatures``."""
        h, w = images.shape[-2:]
        m = self.size_divisibility
        if h % m or w % m:
            raise ValueError(f"image size {h}x{w} is not a multiple of {m}: pad the batch to it")
        return self.neck(self.backbone(images), pad_mask)

    def text_memory(self, text_feats: torch.Tensor, text_token_mask: torch.Tensor,
                    position_ids: torch.Tensor, submask: torch.Tensor) -> TextMemory:  # fmt: skip
        """Text encoder outputs (text_feats (B, T, d_text)) → ``TextMemory`` of width d."""
        if text_feats.shape[-1] != self.text_dim:
            raise ValueError(
                f"text features have width {text_feats.shape[-1]} but the detector was built for "
                f"text_dim={self.text_dim}: set model.detector.text_dim to the text encoder's"
            )
        return TextMemory(self.feat_map(text_feats), text_token_mask, position_ids, submask)

    def _class_head(self, layer: int) -> ContrastiveHead:
        return self.class_heads[layer if len(self.class_heads) > 1 else 0]

    def head_text(self, memory_text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The text tokens (B, T, d) the class heads score against (centred if configured)."""
        return centre_text(memory_text, mask) if self.center_text else memory_text

    def forward_features(
        self, feats: ImageFeatures, text: TextMemory, dn: DNRequest | None = None
    ) -> DetectorOutput:
        """Transformer + heads on precomputed image features and a text memory."""
        memory, memory_text = self.encoder(feats, text)
        return self.decode(feats, memory, memory_text, text.text_token_mask, dn)

    def universal_memory(self, batch_size: int) -> TextMemory:
        """The universal (prompt-free) prompt as a ``TextMemory`` for ``batch_size`` images."""
        if self.universal_prompt is None:
            raise ValueError(
                "prompt-free detection needs a universal prompt: set "
                "model.detector.universal_prompt (e.g. {num_tokens: 1})"
            )
        return self.universal_prompt(batch_size)

    def universal_encoding(self, feats: ImageFeatures) -> torch.Tensor:
        """Encoder memory (B, S, d) with the universal prompt as text stream (visual prompts)."""
        return self.encoder(feats, self.universal_memory(feats.src.shape[0]))[0]

    def encode_visual_prompts(self, feats: ImageFeatures, prompts: VisualPrompts,
                              memory: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """Prompt boxes/points on the images of ``feats`` → one vector per group (G, d);
        ``memory``: their ``universal_encoding`` if already computed."""
        if self.visual_prompt is None:
            raise ValueError("visual prompts need model.detector.visual_prompt to be set")
        memory = self.universal_encoding(feats) if memory is None else memory
        return self.visual_prompt(memory, feats, prompts)

    def forward_visual(self, feats: ImageFeatures, vectors: torch.Tensor,
                       dn: DNRequest | None = None,
                       memory: torch.Tensor | None = None) -> DetectorOutput:  # fmt: skip
        """Detection with visual prompt vectors (B, C, d) as the text memory (spec §12.2): the
        encoder runs with the universal prompt (or ``memory`` is its output), then query
        selection, the decoder's text cross-attention and the head see one token per prompted
        category."""
        memory = self.universal_encoding(feats) if memory is None else memory
        mask = torch.ones(vectors.shape[:2], dtype=torch.bool, device=vectors.device)
        return self.decode(feats, memory, vectors, mask, dn)

    def decode(self, feats: ImageFeatures, memory: torch.Tensor, memory_text: torch.Tensor,
               mask: torch.Tensor, dn: DNRequest | None = None) -> DetectorOutput:  # fmt: skip
        """Query selection, decoder and heads on the encoder outputs memory (B, S, d),
        memory_text (B, T, d) with text_token_mask ``mask`` (B, T)."""
        head_text = self.head_text(memory_text, mask)
        tgt, ref, enc = self.query_selection(memory, feats, head_text, mask)
        attn_mask, meta = None, None
        if dn is not None and self.dn is not None:
            queries = self.dn(dn.boxes, dn.labels, dn.num_categories, tgt.shape[1],
                              dn.generator, memory_text, dn.positive_map)  # fmt: skip
            if queries is not None:
                content, anchors, attn_mask, meta = queries
                tgt, ref = torch.cat([content, tgt], 1), torch.cat([anchors, ref], 1)
        layers = []
        for i, (hidden, boxes) in enumerate(
            self.decoder(tgt, ref, memory, feats, memory_text, mask, attn_mask)
        ):
            layers.append((hidden, Predictions(self._class_head(i)(hidden, head_text), boxes)))
        pad = meta.pad if meta is not None else 0
        split = [Predictions(p.logits[:, pad:], p.boxes[:, pad:]) for _, p in layers]
        dn_out = None
        if meta is not None:
            dn_out = DNOutputs(
                [Predictions(p.logits[:, :pad], p.boxes[:, :pad]) for _, p in layers], meta
            )
        out = DetectorOutput(
            logits=split[-1].logits, boxes=split[-1].boxes, aux=split[:-1], enc=enc, dn=dn_out,
            text_token_mask=mask, hidden=layers[-1][0][:, pad:], memory=memory,
            memory_text=memory_text,
        )  # fmt: skip
        self._extension_heads(out, [h[:, pad:] for h, _ in layers], split, feats)
        return out

    def _extension_heads(self, out: DetectorOutput, hiddens: list[torch.Tensor],
                         layers: list[Predictions], feats: ImageFeatures) -> None:  # fmt: skip
        """Fills masks (every decoder layer) and keypoints (last layer) of ``out`` in place."""
        if self.mask_head is not None:
            pixel = self.mask_head.pixel_embedding(feats, out.memory)
            for hidden, pred in zip(hiddens, layers, strict=True):
                pred.masks = self.mask_head(hidden, pixel)
            out.masks = layers[-1].masks
        if self.keypoint_head is not None:
            *aux, out.keypoints = self.keypoint_head(out.hidden, out.boxes, out.memory, feats)
            out.keypoint_aux = aux

    def forward(
        self,
        images: torch.Tensor,
        pad_mask: torch.Tensor,
        text_feats: torch.Tensor,
        text_token_mask: torch.Tensor,
        position_ids: torch.Tensor,
        submask: torch.Tensor,
        dn: DNRequest | None = None,
    ) -> DetectorOutput:
        """images (B, 3, H, W), pad_mask (B, H, W), text_feats (B, T, d_text), text_token_mask
        (B, T), position_ids (B, T), submask (B, T, T) → ``DetectorOutput``."""
        text = self.text_memory(text_feats, text_token_mask, position_ids, submask)
        return self.forward_features(self.image_features(images, pad_mask), text, dn)


class ExportableImagePath(nn.Module):
    """``GroundingDetector`` with a tuple output, for ``torch.onnx.export`` (decision P10)."""

    def __init__(self, detector: GroundingDetector) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: torch.Tensor, pad_mask: torch.Tensor, text_feats: torch.Tensor,
                text_token_mask: torch.Tensor, position_ids: torch.Tensor,
                submask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """→ logits (B, Q, T), boxes (B, Q, 4) cxcywh."""
        out = self.detector(images, pad_mask, text_feats, text_token_mask, position_ids, submask)
        return out.logits, out.boxes
