"""DINOHead: shapes, weight-normed prototypes with trainable g = 1, init (spec §3.1)."""

import torch

from lightning_modules.components.heads import DINOHead


def test_shapes_and_logit_bound() -> None:
    head = DINOHead(in_dim=32, out_dim=100, hidden_dim=64, bottleneck_dim=16)
    logits = head(torch.randn(7, 32) * 10)
    assert logits.shape == (7, 100)
    # unit-norm bottleneck × unit-norm prototypes (g = 1) → cosine logits in [−1, 1]
    assert logits.abs().max() <= 1.0 + 1e-5


def test_prototype_magnitude_is_one_and_trainable() -> None:
    head = DINOHead(in_dim=8, out_dim=20, hidden_dim=16, bottleneck_dim=4)
    names = dict(head.named_parameters())
    g = names["last_layer.parametrizations.weight.original0"]
    assert g.requires_grad
    torch.testing.assert_close(g, torch.ones_like(g))
    assert all("last_layer" in n for n in names if n.startswith("last_layer"))
    assert head.last_layer.bias is None
    head(torch.randn(3, 8)).sum().backward()
    assert g.grad is not None


def test_mlp_layout_and_init() -> None:
    torch.manual_seed(0)
    head = DINOHead(in_dim=64, out_dim=10, hidden_dim=2048, bottleneck_dim=256, nlayers=3)
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (64, 2048),
        (2048, 2048),
        (2048, 256),
    ]
    assert sum(isinstance(m, torch.nn.GELU) for m in head.mlp) == 2
    w = linears[1].weight
    # trunc_normal(std 0.02) with PyTorch's default ±2 bounds, as the reference: ~N(0, 0.02²)
    assert abs(w.std().item() - 0.02) < 0.002 and w.abs().max() <= 2.0
    assert all(torch.count_nonzero(m.bias) == 0 for m in linears)
    single = DINOHead(in_dim=8, out_dim=5, bottleneck_dim=4, nlayers=1)
    assert len(single.mlp) == 1
