"""Contrastive denoising queries (CDN; DINO ``dn_components.py``, spec §7, decision P6).

``G = max(1, number // max_gt)`` groups, each with a positive and a negative noisy copy of every
GT slot (``pad = G·2·max_gt`` queries, prepended to the matching queries). Positives get box
noise of magnitude in [0, 1)·λ·half-size, negatives in [1, 2)·λ·half-size, on the xyxy corners;
labels flip with probability ``label_noise · 0.5`` to another category of the same caption.
Every draw comes from the ``torch.Generator`` passed in (the LitModule seeds it with
(seed, global_step, rank)), so resuming is exact.
"""

import torch
from torch import nn
from torchvision.ops import box_convert

from lightning_modules.components.detection.heads import inverse_sigmoid
from lightning_modules.components.detection.outputs import DNMeta


def cdn_attention_mask(
    pad: int, num_groups: int, max_gt: int, num_queries: int, device: torch.device | None = None
) -> torch.Tensor:
    """Self-attention mask (pad + Q, pad + Q) bool, True = blocked.

    Matching queries never see DN queries; each DN group is blind to the other groups; DN
    queries see the matching queries (DINO); the diagonal is never blocked.
    """
    size = pad + num_queries
    rows = torch.arange(size, device=device)[:, None]
    cols = torch.arange(size, device=device)[None, :]
    group_size = 2 * max_gt
    matching_sees_dn = (rows >= pad) & (cols < pad)
    other_group = (rows < pad) & (cols < pad) & (rows // group_size != cols // group_size)
    return matching_sees_dn | other_group


def box_noise_offsets(
    boxes: torch.Tensor, negative: torch.Tensor, scale: float, generator: torch.Generator
) -> torch.Tensor:
    """boxes (N, 4) cxcywh, negative (N,) bool → xyxy corner offsets (N, 4).

    |offset| / (scale · half-size) lies in [0, 1) for positives and [1, 2) for negatives, with a
    random sign per coordinate (half-size = (w/2, h/2, w/2, h/2)).
    """
    magnitude = torch.rand(boxes.shape, generator=generator) + negative[:, None].float()
    sign = torch.randint(0, 2, boxes.shape, generator=generator).float() * 2 - 1
    half = boxes[:, 2:].cpu().repeat(1, 2) / 2
    return (sign * magnitude * half * scale).to(boxes.device)


class ContrastiveDenoising(nn.Module):
    """Builds noisy DN queries, their anchors and the self-attention mask.

    Args:
        dim: d. number: DN budget (100 in GD/DINO; 0 disables).
        box_noise: λ. label_noise: flip probability is ``label_noise · 0.5``.
        labelbook: size of the label embedding (caption indices must be below it).
        content: "embed" (``label_embed`` of the caption index) or "text" (the mean of the
            category's ``memory_text`` tokens).
    """

    def __init__(
        self,
        dim: int = 256,
        number: int = 100,
        box_noise: float = 1.0,
        label_noise: float = 0.5,
        labelbook: int = 256,
        content: str = "embed",
    ) -> None:
        super().__init__()
        if content not in ("embed", "text"):
            raise ValueError(f"dn content must be 'embed' or 'text', got {content!r}")
        self.number, self.box_noise, self.label_noise = number, box_noise, label_noise
        self.labelbook, self.content = labelbook, content
        self.label_embed = nn.Embedding(labelbook + 1, dim)  # the last row: padding slots

    def _padded(
        self, gt_boxes: list[torch.Tensor], gt_labels: list[torch.Tensor], max_gt: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b = len(gt_boxes)
        boxes = torch.full((b, max_gt, 4), 0.5)
        labels = torch.full((b, max_gt), self.labelbook, dtype=torch.long)
        valid = torch.zeros(b, max_gt, dtype=torch.bool)
        for i, (bx, lb) in enumerate(zip(gt_boxes, gt_labels, strict=True)):
            boxes[i, : len(bx)], labels[i, : len(lb)], valid[i, : len(bx)] = (
                bx.cpu(),
                lb.cpu(),
                True,
            )
        return boxes, labels, valid

    def forward(
        self,
        gt_boxes: list[torch.Tensor],
        gt_labels: list[torch.Tensor],
        num_categories: list[int],
        num_queries: int,
        generator: torch.Generator,
        memory_text: torch.Tensor | None = None,
        positive_map: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, DNMeta] | None:
        """Per image gt_boxes[b] (G_b, 4) cxcywh, gt_labels[b] (G_b,) caption indices,
        num_categories[b] = C_b → (content (B, pad, d), anchors (B, pad, 4) inverse-sigmoid,
        attention mask (pad + Q, pad + Q), meta), or None when DN is off or no image has a GT.
        ``memory_text`` (B, T, d) and ``positive_map`` (B, C_max, T) are needed for "text".
        """
        max_gt = max((len(b) for b in gt_boxes), default=0)
        if self.number <= 0 or max_gt == 0:
            return None
        device = self.label_embed.weight.device
        groups = max(1, self.number // max_gt)
        boxes, labels, valid = self._padded(gt_boxes, gt_labels, max_gt)
        b = len(gt_boxes)
        shape = (b, groups, 2, max_gt)
        boxes = boxes[:, None, None].expand(*shape, 4)
        valid = valid[:, None, None].expand(shape)
        negative = torch.tensor([False, True]).view(1, 1, 2, 1).expand(shape)
        flip = (torch.rand(shape, generator=generator) < self.label_noise * 0.5) & valid
        n_cats = torch.as_tensor(num_categories, dtype=torch.float32).view(b, 1, 1, 1)
        random_labels = (torch.rand(shape, generator=generator) * n_cats).long()
        labels = torch.where(flip, random_labels, labels[:, None, None].expand(shape))
        if int(labels[valid].max()) >= self.labelbook and self.content == "embed":
            raise ValueError(f"caption index ≥ dn.labelbook={self.labelbook}: raise labelbook")
        offsets = box_noise_offsets(boxes.reshape(-1, 4), negative.reshape(-1),
                                    self.box_noise, generator).view(*shape, 4)  # fmt: skip
        noisy = (box_convert(boxes, "cxcywh", "xyxy") + offsets).clamp(0, 1)
        noisy = torch.where(valid[..., None], box_convert(noisy, "xyxy", "cxcywh"), boxes)
        pad = groups * 2 * max_gt
        anchors = inverse_sigmoid(noisy.reshape(b, pad, 4)).to(device)
        labels = labels.reshape(b, pad).to(device)
        if self.content == "text":
            if memory_text is None or positive_map is None:
                raise ValueError("dn content 'text' needs memory_text and positive_map")
            rows = positive_map.gather(1, labels.clamp(max=positive_map.shape[1] - 1)[..., None]
                                       .expand(-1, -1, positive_map.shape[2]))  # fmt: skip
            rows = rows * valid.reshape(b, pad, 1).to(device)
            content = rows / rows.sum(-1, keepdim=True).clamp(min=1) @ memory_text
        else:
            content = self.label_embed(labels)
        mask = cdn_attention_mask(pad, groups, max_gt, num_queries, device)
        return content, anchors, mask, DNMeta(pad, groups, max_gt)
