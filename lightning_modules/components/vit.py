"""DINOv2 backbone: timm's ``VisionTransformer`` plus an iBOT mask token (spec §2, decision D1).

timm provides the architectures (LayerScale, registers, SwiGLU, dynamic image size); the wrapper
adds the three things DINOv2 needs on top: a learned mask token substituted at masked patch
positions *before* positional embeddings and prefix tokens, a stochastic-depth rate that is
uniform across blocks, and outputs split into CLS / register / patch tokens.
"""

from collections.abc import Sequence
from typing import Literal

import timm
import torch
import torch.nn.functional as F
from timm.layers import DropPath, GluMlp, SwiGLUPacked
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from lightning_modules.components.vit_block import DINOv2Block, subset_keep_factor

FFNType = Literal["mlp", "swiglu"]
# per_sample: timm's DropPath (Bernoulli per sample, the branch is computed and multiplied by 0);
# batch_subset: the reference's efficient stochastic depth (the branch runs only on kept samples)
DropPathMode = Literal["per_sample", "batch_subset"]
# embed_dim of timm's ``vit_{size}_patch14[_reg4]_dinov2`` names, for FFN overrides (ViT-L SwiGLU)
_TIMM_EMBED_DIMS = {"small": 384, "base": 768, "large": 1024, "giant": 1536}


def swiglu_hidden_dim(embed_dim: int) -> int:
    """DINOv2's SwiGLU width ``h``: 8D/3 rounded up to a multiple of 8 (4096 for g, 2736 for L)."""
    return ((int(embed_dim * 4 * 2 / 3) + 7) // 8) * 8


def _ffn_kwargs(ffn: FFNType, embed_dim: int, mlp_ratio: float) -> dict:
    """timm ``VisionTransformer`` kwargs for the FFN type.

    timm builds the hidden width as ``int(D * mlp_ratio)``; for the packed SwiGLU the first linear
    is D → 2h. Half a unit of margin keeps ``int`` from rounding 2h down through float error.
    """
    if ffn == "mlp":
        return {"mlp_ratio": mlp_ratio}
    if ffn == "swiglu":
        packed = 2 * swiglu_hidden_dim(embed_dim)
        return {
            "mlp_ratio": (packed + 0.5) / embed_dim,
            "mlp_layer": SwiGLUPacked,
            "act_layer": nn.SiLU,
        }
    raise ValueError(f"ffn must be 'mlp' or 'swiglu', got {ffn!r}")


class DINOv2Backbone(nn.Module):
    """ViT backbone with an iBOT mask token; outputs final-norm CLS, register and patch tokens.

    Built either from a timm DINOv2 architecture name (``arch='vit_small_patch14_dinov2'``,
    ``'vit_large_patch14_reg4_dinov2'``, ...) or, with ``arch=None``, from explicit fields
    (tiny CPU configs). Token order: ``[CLS, reg_1..reg_R, patch_1..patch_N]``; registers are
    concatenated after the positional embedding is added, so they carry none.

    Args:
        arch: timm model name, or None to build from ``embed_dim``/``depth``/``num_heads``.
        img_size: size the positional embedding is built for (the global crop size). Other
            multiples of ``patch_size`` are handled by timm's bicubic resampling.
        patch_size, embed_dim, depth, num_heads: architecture; only with ``arch=None``.
        num_register_tokens: R; with ``arch`` it must match the name (0, or 4 for ``_reg4``).
        ffn: ``mlp`` (×``mlp_ratio``, GELU) or ``swiglu`` (packed, width ``swiglu_hidden_dim``).
            None keeps the arch default (SwiGLU for g, MLP otherwise; MLP without arch).
        mlp_ratio: MLP width ratio for ``ffn='mlp'`` without ``arch`` (4).
        layerscale_init: LayerScale ``gamma`` init (1e-5); None disables LayerScale.
        drop_path: stochastic-depth rate, the same for every block.
        drop_path_mode: ``per_sample`` (timm's Bernoulli mask per sample) or ``batch_subset``
            (spec §2.2, the reference's efficient stochastic depth: each residual branch runs on
            an exact random subset of ⌊(1−d)B⌋ samples, rescaled by B/subset, so dropped
            samples cost no FLOPs). Same expectation; different random draws.
        fused_attention: attention through ``F.scaled_dot_product_attention`` (timm's default)
            or, when False, timm's explicit path (``softmax(q·kᵀ/√d)·v`` as batched matmuls):
            the same math up to rounding. On CPU under bf16 autocast the explicit path spends
            about 8× less time in attention on short sequences (65 / 17 tokens), since SDPA's CPU
            bf16 backward kernel is slow there (issue 4 in experiments/RESULTS.md).
        pretrained: load timm's DINOv2 weights (needs internet); never the default.
    """

    def __init__(
        self,
        arch: str | None = None,
        *,
        img_size: int = 224,
        patch_size: int | None = None,
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        num_register_tokens: int | None = None,
        ffn: FFNType | None = None,
        mlp_ratio: float = 4.0,
        layerscale_init: float | None = 1e-5,
        drop_path: float = 0.0,
        drop_path_mode: DropPathMode = "per_sample",
        fused_attention: bool = True,
        pretrained: bool = False,
    ) -> None:
        super().__init__()
        if arch is None:
            if None in (patch_size, embed_dim, depth, num_heads):
                raise ValueError("arch=None needs patch_size, embed_dim, depth and num_heads")
            self.vit = VisionTransformer(
                img_size=img_size,
                patch_size=patch_size,
                embed_dim=embed_dim,
                depth=depth,
                num_heads=num_heads,
                num_classes=0,
                init_values=layerscale_init,
                reg_tokens=num_register_tokens or 0,
                # Registers carry no positional embedding (spec §2.4), as in timm's _reg4 archs.
                no_embed_class=bool(num_register_tokens),
                dynamic_img_size=True,
                block_fn=DINOv2Block,
                **_ffn_kwargs(ffn or "mlp", embed_dim, mlp_ratio),
            )
        else:
            if any(v is not None for v in (patch_size, embed_dim, depth, num_heads)):
                raise ValueError(
                    f"arch={arch!r} fixes patch_size/embed_dim/depth/num_heads; "
                    "pass arch=None to set them explicitly"
                )
            self.vit = self._build_timm(arch, img_size, ffn, mlp_ratio, layerscale_init, pretrained)
            if num_register_tokens is not None and num_register_tokens != self.vit.num_reg_tokens:
                raise ValueError(
                    f"arch={arch!r} has {self.vit.num_reg_tokens} register tokens, "
                    f"num_register_tokens={num_register_tokens} requested; use a '_reg4' arch"
                )
        if img_size % self.patch_size:
            raise ValueError(
                f"img_size {img_size} is not a multiple of the patch size {self.patch_size}"
            )
        self.embed_dim: int = self.vit.embed_dim
        self.num_register_tokens: int = self.vit.num_reg_tokens
        self.num_blocks: int = len(self.vit.blocks)
        # iBOT mask token, zeros at init (spec §2.2); (1, D)
        self.mask_token = nn.Parameter(torch.zeros(1, self.embed_dim))
        self.set_drop_path(drop_path, drop_path_mode)
        for block in self.vit.blocks:
            block.attn.fused_attn = fused_attention  # timm's switch, read in every forward
        if not pretrained:
            self._reset_swiglu_init()

    def _reset_swiglu_init(self) -> None:
        """Give packed SwiGLU layers the reference init: ``trunc_normal(0.02)``, zero bias.

        timm's ``GluMlp.init_weights`` sets the value half of ``fc1`` to ~0 with bias 1, which
        makes the block start as a plain gated MLP; DINOv2 inits ``w12`` like every Linear.
        """
        for block in self.vit.blocks:
            if isinstance(block.mlp, GluMlp):
                nn.init.trunc_normal_(block.mlp.fc1.weight, std=0.02)
                if block.mlp.fc1.bias is not None:
                    nn.init.zeros_(block.mlp.fc1.bias)

    @staticmethod
    def _build_timm(
        arch: str,
        img_size: int,
        ffn: FFNType | None,
        mlp_ratio: float,
        layerscale_init: float | None,
        pretrained: bool,
    ) -> VisionTransformer:
        kwargs: dict = {}
        if ffn is not None:
            default = "swiglu" if "giant" in arch else "mlp"
            if ffn != default:
                if pretrained:
                    raise ValueError(
                        f"pretrained {arch!r} weights use ffn={default!r}, not {ffn!r}"
                    )
                size = next((k for k in _TIMM_EMBED_DIMS if k in arch), None)
                if size is None:
                    raise ValueError(f"cannot override the FFN of unknown arch {arch!r}")
                kwargs.update(_ffn_kwargs(ffn, _TIMM_EMBED_DIMS[size], mlp_ratio))
        if layerscale_init != 1e-5:
            kwargs["init_values"] = layerscale_init
        vit = timm.create_model(
            arch,
            pretrained=pretrained,
            img_size=img_size,
            num_classes=0,
            dynamic_img_size=True,
            block_fn=DINOv2Block,
            **kwargs,
        )
        if not isinstance(vit, VisionTransformer):
            raise TypeError(f"{arch!r} is not a timm VisionTransformer")
        return vit

    @property
    def patch_size(self) -> int:
        return int(self.vit.patch_embed.patch_size[0])

    @property
    def num_prefix_tokens(self) -> int:
        """1 (CLS) + R (registers)."""
        return int(self.vit.num_prefix_tokens)

    def set_drop_path(self, rate: float, mode: DropPathMode | None = None) -> None:
        """Give every block the same stochastic-depth ``rate`` (timm defaults to a 0→rate ramp).

        ``mode`` keeps the current one when None. In ``batch_subset`` mode the blocks' own
        ``drop_path1/2`` are identities and each ``DINOv2Block`` drops a sample subset instead.
        """
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {rate}")
        mode = mode or getattr(self, "drop_path_mode", "per_sample")
        if mode not in ("per_sample", "batch_subset"):
            raise ValueError(f"drop_path_mode must be 'per_sample' or 'batch_subset', got {mode!r}")
        per_sample = rate > 0 and mode == "per_sample"
        for block in self.vit.blocks:
            block.drop_path1 = DropPath(rate) if per_sample else nn.Identity()
            block.drop_path2 = DropPath(rate) if per_sample else nn.Identity()
            block.subset_drop_rate = rate if mode == "batch_subset" else 0.0
        self.drop_path_rate = rate
        self.drop_path_mode: DropPathMode = mode

    def compile_blocks(self) -> None:
        """Compile every transformer block in place with ``torch.compile`` (Inductor).

        Only the blocks are compiled: masking, positional-embedding resampling, the shape checks
        and ``forward_selected``'s last block stay eager, so nothing breaks a graph.
        ``dynamic=False`` gives one static graph per token shape (global, local; training and
        no-grad), compiled on first use. ``nn.Module.compile`` keeps the modules, their
        parameters and the state-dict keys (no ``_orig_mod.`` prefix): checkpoints are unchanged.
        The batch-subset drop-path lives in the block's ``forward`` and is compiled with it.
        """
        for block in self.vit.blocks:
            block.compile(dynamic=False)

    def _check_size(self, x: torch.Tensor) -> None:
        h, w = x.shape[-2:]
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(
                f"image size {h}x{w} is not a multiple of the patch size {p}; "
                f"use crop sizes divisible by {p} (e.g. {max(p, h // p * p)})"
            )

    def prepare_tokens(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """Images (B, 3, H, W), masks (B, N) bool → first-block input (B, 1+R+N, D).

        Masked patch embeddings are replaced by the mask token before timm adds positional
        embeddings and prefix tokens, so a masked token is ``mask_token + pos_embed[i]``.
        """
        self._check_size(x)
        tokens = self.vit.patch_embed(x)  # (B, h, w, D): NHWC because dynamic_img_size=True
        if masks is not None:
            b, h, w, d = tokens.shape
            if masks.shape != (b, h * w):
                raise ValueError(f"masks must have shape {(b, h * w)}, got {tuple(masks.shape)}")
            mask_token = self.mask_token.to(tokens.dtype).view(1, 1, 1, d)
            tokens = torch.where(masks.view(b, h, w, 1), mask_token, tokens)
        tokens = self.vit._pos_embed(tokens)
        tokens = self.vit.patch_drop(tokens)
        return self.vit.norm_pre(tokens)

    def forward_features(
        self, x: torch.Tensor, masks: torch.Tensor | None = None, return_prenorm: bool = False
    ) -> dict[str, torch.Tensor]:
        """Images (B, 3, H, W) [, masks (B, N) bool] → final-norm tokens.

        Returns ``cls`` (B, D), ``reg`` (B, R, D), ``patch`` (B, N, D) and, when requested,
        ``prenorm`` (B, 1+R+N, D).
        """
        tokens = self.prepare_tokens(x, masks)
        for block in self.vit.blocks:
            tokens = block(tokens)
        normed = self.vit.norm(tokens)
        r = self.num_register_tokens
        out = {"cls": normed[:, 0], "reg": normed[:, 1 : 1 + r], "patch": normed[:, 1 + r :]}
        if return_prenorm:
            out["prenorm"] = tokens
        return out

    def forward_selected(
        self,
        x: torch.Tensor,
        masks: torch.Tensor | None = None,
        patch_index: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Final-norm CLS of every image and the patch tokens at ``patch_index`` only.

        Equal (up to float rounding) to ``forward_features(x, masks)`` followed by
        ``["cls"]`` and ``["patch"].flatten(0, 1)[patch_index]``, but the last block runs only
        where those outputs need it: keys and values for every token, queries, projection and
        FFN for the selected tokens. The DINO and iBOT losses read nothing else; in the CPU
        speed benchmark this skips about 70 % of the last block's FLOPs.

        Args:
            x: images (B, 3, H, W).
            masks: (B, N) bool iBOT masks, or None.
            patch_index: (n,) flat indices into the (B·N) patch tokens, or None for none.

        Returns:
            ``cls`` (B, D) and ``patch`` (n, D) (``(0, D)`` without ``patch_index``).
        """
        tokens = self.prepare_tokens(x, masks)
        *body, last = self.vit.blocks
        for block in body:
            tokens = block(tokens)
        b, t, _ = tokens.shape
        n_patches = t - self.num_prefix_tokens
        if patch_index is None:
            patch_index = torch.zeros(0, dtype=torch.long, device=x.device)
        crop = torch.div(patch_index, n_patches, rounding_mode="floor")
        position = patch_index - crop * n_patches + self.num_prefix_tokens
        all_crops = torch.arange(b, device=x.device)
        rows = (torch.cat([all_crops, crop]), torch.cat([torch.zeros_like(all_crops), position]))
        out = self.vit.norm(_block_at(last, tokens, *rows))
        return {"cls": out[:b], "patch": out[b:]}

    def get_intermediate_layers(
        self, x: torch.Tensor, n: int | Sequence[int] = 1
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        """Per-block ``(patch (B, N, D), cls (B, D))`` through the final norm, registers stripped.

        ``n`` is the number of last blocks, or explicit 0-based block indices (e.g. the depth
        probe's ``[2, 5, 8, 11]``). Outputs follow block order.
        """
        wanted = range(self.num_blocks - n, self.num_blocks) if isinstance(n, int) else n
        wanted = sorted(set(wanted))
        if not wanted or wanted[0] < 0 or wanted[-1] >= self.num_blocks:
            raise ValueError(f"block indices {list(wanted)} outside [0, {self.num_blocks})")
        tokens = self.prepare_tokens(x)
        outputs = []
        for i, block in enumerate(self.vit.blocks[: wanted[-1] + 1]):
            tokens = block(tokens)
            if i in wanted:
                normed = self.vit.norm(tokens)
                outputs.append((normed[:, self.num_prefix_tokens :], normed[:, 0]))
        return tuple(outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) → final-norm CLS (B, D)."""
        return self.forward_features(x)["cls"]


def _block_at(
    block: nn.Module, x: torch.Tensor, crop: torch.Tensor, position: torch.Tensor
) -> torch.Tensor:
    """Rows ``block(x)[crop, position]`` (S, D) of a timm ``Block``, computed for those rows only.

    Every token of a crop still provides keys and values; queries are gathered per crop, padded
    to the largest count (the padding rows are computed and dropped), so attention needs no
    gather of keys. Drop-path draws one (B,) mask per branch in the block's own order, so the
    random numbers match ``block(x)``; a ``DINOv2Block`` in batch-subset mode draws its subsets
    as ``block(x)`` does, applied here as factors (no FLOPs saved in this last block).
    """
    attn = block.attn
    plain = hasattr(attn, "qkv") and getattr(attn, "gate", None) is None
    if not plain or (attn.attn_drop.p and attn.training):
        raise NotImplementedError(
            "the selected-token forward supports timm's plain Attention without attention dropout"
        )
    b, t, d = x.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    # slot of each selected row among its crop's queries (rows sorted by crop, stable)
    order = torch.argsort(crop, stable=True)
    counts = torch.bincount(crop, minlength=b)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.empty_like(crop)
    slot[order] = torch.arange(len(crop), device=x.device) - starts[crop[order]]
    query_pos = torch.zeros(b, int(counts.max()), dtype=torch.long, device=x.device)
    query_pos[crop, slot] = position

    h = block.norm1(x)
    w_q, w_kv = attn.qkv.weight.split([heads * head_dim, 2 * heads * head_dim])
    b_q, b_kv = (
        (None, None)
        if attn.qkv.bias is None
        else attn.qkv.bias.split([heads * head_dim, 2 * heads * head_dim])
    )
    k, v = F.linear(h, w_kv, b_kv).view(b, t, 2, heads, head_dim).permute(2, 0, 3, 1, 4)
    h_q = h.gather(1, query_pos.unsqueeze(-1).expand(-1, -1, d))  # (B, Q, D)
    q = F.linear(h_q, w_q, b_q).view(b, -1, heads, head_dim).transpose(1, 2)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if attn.fused_attn:
        y = F.scaled_dot_product_attention(q, k, v)  # (B, heads, Q, hd)
    else:  # timm's explicit path, as block.attn runs it
        y = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
    y = attn.norm(y.transpose(1, 2).flatten(2)[crop, slot])  # (S, heads·hd)
    y = attn.proj_drop(attn.proj(y))
    subset_rate = getattr(block, "subset_drop_rate", 0.0) if block.training else 0.0
    if not subset_rate:
        keep1 = block.drop_path1(x.new_ones(b, 1))  # (B, 1): 0 or 1/keep in training, else 1
        keep2 = block.drop_path2(x.new_ones(b, 1))
    else:
        keep1 = subset_keep_factor(x, subset_rate)
        keep2 = subset_keep_factor(x, subset_rate)
    y = x[crop, position] + block.ls1(y) * keep1[crop]
    return y + block.ls2(block.mlp(block.norm2(y))) * keep2[crop]
