"""Spec §15 test 1: the grid_sample MSDA equals an explicit float64 bilinear loop."""

import math

import pytest
import torch

from lightning_modules.components.detection.deformable_attention import (
    MultiScaleDeformableAttention,
    ms_deform_attn_core,
)

SHAPES = torch.tensor([[4, 5], [3, 2], [2, 3]])  # (h, w) per level, all different


def _bilinear(v: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """v (h, w, D); (x, y) in pixel units with centres at integers (loc · size − 0.5)."""
    h, w, _ = v.shape
    x0, y0 = math.floor(x), math.floor(y)
    fx, fy = x - x0, y - y0
    out = torch.zeros(v.shape[-1], dtype=v.dtype)
    corners = [(0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy))]
    corners += [(0, 1, (1 - fx) * fy), (1, 1, fx * fy)]
    for dx, dy, weight in corners:
        xi, yi = x0 + dx, y0 + dy
        if 0 <= xi < w and 0 <= yi < h:  # neighbours outside the map count as 0
            out += weight * v[yi, xi]
    return out


def reference_core(value, shapes, locations, weights) -> torch.Tensor:
    """Brute force over (b, q, h, l, p): value (B, S, H, Dh) → (B, Nq, H·Dh)."""
    b_, _, n_heads, dh = value.shape
    _, n_q, _, n_levels, n_points, _ = locations.shape
    starts = [0, *torch.cumsum(shapes.prod(1), 0).tolist()]
    out = torch.zeros(b_, n_q, n_heads, dh, dtype=value.dtype)
    for b in range(b_):
        for q in range(n_q):
            for h in range(n_heads):
                for lvl in range(n_levels):
                    hl, wl = shapes[lvl].tolist()
                    v = value[b, starts[lvl] : starts[lvl + 1], h].view(hl, wl, dh)
                    for p in range(n_points):
                        lx, ly = locations[b, q, h, lvl, p].tolist()
                        sample = _bilinear(v, lx * wl - 0.5, ly * hl - 0.5)
                        out[b, q, h] += weights[b, q, h, lvl, p] * sample
    return out.flatten(2)


def _module(seed: int = 0) -> MultiScaleDeformableAttention:
    torch.manual_seed(seed)
    m = MultiScaleDeformableAttention(embed_dim=8, num_heads=2, num_levels=3, num_points=3)
    with torch.no_grad():  # non-trivial offsets and weights, large enough to leave the maps
        m.sampling_offsets.weight.normal_(0, 1.5)
        m.attention_weights.weight.normal_(0, 1.0)
    return m.double()


@pytest.mark.parametrize("ref_dim", [2, 4])
def test_msda_matches_bruteforce(ref_dim: int) -> None:
    m = _module()
    g = torch.Generator().manual_seed(1)
    b, n_q, s = 2, 3, int(SHAPES.prod(1).sum())
    query = torch.randn(b, n_q, 8, generator=g, dtype=torch.float64)
    value = torch.randn(b, s, 8, generator=g, dtype=torch.float64)
    pad = torch.rand(b, s, generator=g) < 0.3
    ref = torch.rand(b, n_q, 3, ref_dim, generator=g, dtype=torch.float64)
    out = m(query, value, ref, SHAPES, value_pad_mask=pad)

    # Reference built from the parameters, with the spec's location formulas written out.
    v = m.value_proj(value).masked_fill(pad[..., None], 0).view(b, s, 2, 4)
    off = m.sampling_offsets(query).view(b, n_q, 2, 3, 3, 2)
    aw = m.attention_weights(query).view(b, n_q, 2, 9).softmax(-1).view(b, n_q, 2, 3, 3)
    loc = torch.empty_like(off)
    for lvl, (hl, wl) in enumerate(SHAPES.tolist()):
        r = ref[:, :, None, lvl, None, :]
        if ref_dim == 2:
            loc[:, :, :, lvl] = r + off[:, :, :, lvl] / torch.tensor([wl, hl], dtype=r.dtype)
        else:
            loc[:, :, :, lvl] = r[..., :2] + off[:, :, :, lvl] / 3 * r[..., 2:] * 0.5
    assert ((loc < 0) | (loc > 1)).any(), "the test must include points outside the maps"
    expected = m.output_proj(reference_core(v, SHAPES, loc, aw))
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=0)


def test_core_gradcheck() -> None:
    g = torch.Generator().manual_seed(2)
    shapes = torch.tensor([[3, 2], [2, 2]])
    value = torch.randn(1, 10, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    loc = (
        torch.rand(1, 2, 2, 2, 2, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2
    ).requires_grad_()
    aw = torch.rand(1, 2, 2, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda *a: ms_deform_attn_core(a[0], shapes, *a[1:]), (value, loc, aw)
    )


def test_zero_init_direction_pattern() -> None:
    m = MultiScaleDeformableAttention(embed_dim=16, num_heads=8, num_levels=2, num_points=2)
    query = torch.randn(1, 3, 16)
    ref = torch.rand(1, 3, 2, 2)
    shapes = torch.tensor([[4, 6], [2, 3]])
    loc, aw = m.sampling(query, ref, shapes)
    pixels = (loc - ref[:, :, None, :, None, :]) * shapes.flip(-1)[None, None, None, :, None, :]
    # Head h points along θ = 2πh/8, scaled so the larger component is 1; point p is (p+1)×.
    ring = torch.tensor([[1, 0], [1, 1], [0, 1], [-1, 1], [-1, 0], [-1, -1], [0, -1], [1, -1]])
    expected = ring[:, None, None, :] * torch.tensor([1.0, 2.0])[None, None, :, None]
    torch.testing.assert_close(pixels, expected.expand(1, 3, 8, 2, 2, 2).float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(aw, torch.full_like(aw, 0.25))


def test_rejects_bad_reference_dim() -> None:
    m = MultiScaleDeformableAttention(embed_dim=8, num_heads=2, num_levels=1, num_points=1)
    with pytest.raises(ValueError, match="2 or 4"):
        m(
            torch.randn(1, 2, 8),
            torch.randn(1, 4, 8),
            torch.rand(1, 2, 1, 3),
            torch.tensor([[2, 2]]),
        )
