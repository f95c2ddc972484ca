"""Pictures of what a ViT sees: PCA of patch features and CLS attention maps.

``pca_rgb`` follows the paper's visualisation (Fig. 1 and §7.4): a first PCA over the patch
features of all images; thresholding its first component separates foreground from background;
a second PCA over the foreground patches only gives three components shown as RGB (background
black). The sign of a principal component is arbitrary; the first is oriented so that the image
border (mostly background) scores low. ``cls_attention_maps`` is the CLS query's attention over
the patch keys in the last block, per head (as in DINOv1's attention pictures).
"""

import torch
from torch import Tensor, nn


def _principal_components(x: Tensor, n: int) -> Tensor:
    """Rows (M, D) → their projections (M, n) on the top-n principal axes (zeros beyond rank)."""
    centred = x - x.mean(dim=0, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    proj = centred @ vh[:n].T
    if proj.shape[1] < n:
        proj = torch.cat([proj, proj.new_zeros(len(proj), n - proj.shape[1])], dim=1)
    return proj


def _border_mask(h: int, w: int) -> Tensor:
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[0], mask[-1], mask[:, 0], mask[:, -1] = True, True, True, True
    return mask


def pca_rgb(
    patch_tokens: Tensor, grid: tuple[int, int], foreground_threshold: float | None = 0.0
) -> tuple[Tensor, Tensor]:
    """Patch features → RGB pictures of their principal components.

    Args:
        patch_tokens: (B, N, D) with N = h·w in row-major patch order.
        grid: (h, w) patch grid.
        foreground_threshold: foreground = first component > threshold, in units of that
            component's standard deviation over all patches; None keeps every patch.

    Returns: ``rgb (B, 3, h, w)`` in [0, 1] (background 0) and ``foreground (B, h, w)`` bool.
    """
    b, n, d = patch_tokens.shape
    h, w = grid
    if h * w != n:
        raise ValueError(f"grid {grid} does not hold {n} patches")
    x = patch_tokens.detach().float().reshape(b * n, d).cpu()
    if foreground_threshold is None:
        foreground = torch.ones(b * n, dtype=torch.bool)
    else:
        first = _principal_components(x, 1)[:, 0]
        border = _border_mask(h, w).flatten().repeat(b)
        if (~border).any() and first[border].mean() > first[~border].mean():
            first = -first  # orient: the border (mostly background) scores low
        foreground = first > foreground_threshold * first.std().clamp_min(1e-12)
    rgb = torch.zeros(b * n, 3)
    if foreground.sum() >= 2:
        comps = _principal_components(x[foreground], 3)
        low, high = comps.min(dim=0).values, comps.max(dim=0).values
        rgb[foreground] = (comps - low) / (high - low).clamp_min(1e-12)
    rgb = rgb.reshape(b, h, w, 3).permute(0, 3, 1, 2).contiguous()
    return rgb, foreground.reshape(b, h, w)


@torch.no_grad()
def cls_attention_maps(backbone: nn.Module, images: Tensor) -> Tensor:
    """Last-block attention of the CLS query over the patch keys, per head.

    ``backbone`` is a ``DINOv2Backbone`` (timm ``VisionTransformer`` at ``backbone.vit``);
    the attention input is captured by a forward pre-hook on the last block's timm
    ``Attention`` and the softmax is recomputed from its ``qkv`` (with timm's q/k norms).

    Args:
        images: (B, 3, H, W), H and W multiples of the patch size.

    Returns: (B, heads, H/p, W/p); each map sums to at most 1 (the rest goes to prefix tokens).
    """
    attn = backbone.vit.blocks[-1].attn
    captured: list[Tensor] = []
    handle = attn.register_forward_pre_hook(lambda _, args: captured.append(args[0]))
    try:
        backbone.forward_features(images)
    finally:
        handle.remove()
    x = captured[0]
    bsz, n_tokens, _ = x.shape
    qkv = attn.qkv(x).reshape(bsz, n_tokens, 3, attn.num_heads, attn.head_dim)
    q, k, _ = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    weights = ((q[:, :, :1] * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    patch = backbone.patch_size
    grid = (images.shape[-2] // patch, images.shape[-1] // patch)
    cls_to_patches = weights[:, :, 0, backbone.num_prefix_tokens :]
    return cls_to_patches.reshape(bsz, attn.num_heads, *grid).float()
