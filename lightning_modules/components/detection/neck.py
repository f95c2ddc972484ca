"""Channel mapper: backbone maps → L levels of width d, flattened with positions (spec §3.2).

Per input map a 1×1 conv + GroupNorm(32, d) (GD ``input_proj``, mmdet ``ChannelMapper``); the
extra levels are 3×3 stride-2 convs + GN, the first applied to the *raw* last backbone map.
Flattened tokens carry a sine position embedding (temperature 20, normalised to the unpadded
image) plus a learnable per-level embedding.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.components.detection.outputs import ImageFeatures
from lightning_modules.components.detection.position_encoding import sine_position_embedding_2d


def level_masks(pad_mask: torch.Tensor, maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """pad_mask (B, H, W) bool, True = padding → one (B, h_l, w_l) bool mask per map (nearest)."""
    full = pad_mask[:, None].float()
    return [F.interpolate(full, size=m.shape[-2:]).to(torch.bool)[:, 0] for m in maps]


def valid_ratios(mask: torch.Tensor) -> torch.Tensor:
    """mask (B, h, w) bool, True = padding → (B, 2) valid fraction of (width, height)."""
    h, w = mask.shape[-2:]
    valid_h = (~mask[:, :, 0]).sum(1).float() / h
    valid_w = (~mask[:, 0, :]).sum(1).float() / w
    return torch.stack([valid_w, valid_h], dim=-1)


class ChannelMapper(nn.Module):
    """Projects backbone maps to ``num_levels`` levels of width d and flattens them.

    Args:
        in_channels: channels of the backbone maps it consumes (the last ``len(in_channels)``).
        d_model: output width d (divisible by ``groups``).
        num_levels: L ≥ len(in_channels); the extra levels are stride-2 convs.
        groups: GroupNorm groups (32 in GD).
        temperature: sine position embedding temperature (20 in GD).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        d_model: int = 256,
        num_levels: int = 4,
        groups: int = 32,
        temperature: float = 20.0,
    ) -> None:
        super().__init__()
        if num_levels < len(in_channels):
            raise ValueError(f"num_levels {num_levels} < {len(in_channels)} backbone maps")
        self.num_inputs, self.num_levels, self.temperature = (
            len(in_channels),
            num_levels,
            temperature,
        )
        self.d_model = d_model
        self.inputs = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, d_model, 1), nn.GroupNorm(groups, d_model))
            for c in in_channels
        )
        extra_in = [in_channels[-1]] + [d_model] * (num_levels - len(in_channels) - 1)
        self.extra = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(c, d_model, 3, stride=2, padding=1), nn.GroupNorm(groups, d_model)
            )
            for c in extra_in[: num_levels - len(in_channels)]
        )
        self.level_embed = nn.Parameter(torch.empty(num_levels, d_model))
        nn.init.normal_(self.level_embed)
        for block in [*self.inputs, *self.extra]:
            nn.init.xavier_uniform_(block[0].weight)
            nn.init.zeros_(block[0].bias)

    def project(self, maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The last ``num_inputs`` backbone maps → L maps (B, d, h_l, w_l)."""
        maps = list(maps)[-self.num_inputs :]
        out = [proj(m) for proj, m in zip(self.inputs, maps, strict=True)]
        last = maps[-1]
        for conv in self.extra:
            last = conv(last)
            out.append(last)
        return out

    def forward(self, maps: Sequence[torch.Tensor], pad_mask: torch.Tensor) -> ImageFeatures:
        """Backbone maps (finest first) and pad_mask (B, H, W) → flattened ``ImageFeatures``.

        A leading map beyond the consumed ones (a stride-4 map) becomes ``ImageFeatures.stride4``.
        """
        levels = self.project(maps)
        masks = level_masks(pad_mask, levels)
        src, pos, flat_masks = [], [], []
        for lvl, (x, m) in enumerate(zip(levels, masks, strict=True)):
            p = sine_position_embedding_2d(m, self.d_model // 2, self.temperature)
            src.append(x.flatten(2).transpose(1, 2))
            pos.append(p.flatten(2).transpose(1, 2) + self.level_embed[lvl].to(p.dtype))
            flat_masks.append(m.flatten(1))
        shapes = torch.as_tensor([x.shape[-2:] for x in levels], dtype=torch.long,
                                 device=pad_mask.device)  # fmt: skip
        starts = torch.cat([shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]])
        extra = list(maps)[: len(maps) - self.num_inputs]
        return ImageFeatures(
            src=torch.cat(src, 1), pos=torch.cat(pos, 1).to(src[0].dtype),
            pad_mask=torch.cat(flat_masks, 1), spatial_shapes=shapes, level_start_index=starts,
            valid_ratios=torch.stack([valid_ratios(m) for m in masks], 1),
            stride4=extra[0] if extra else None,
        )  # fmt: skip
