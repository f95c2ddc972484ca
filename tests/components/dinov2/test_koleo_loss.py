"""KoLeoLoss: duplicates finite, batch 1 rejected, regular-simplex closed form (§4.5, §13.8)."""

import math

import pytest
import torch

from lightning_modules.components.losses import KoLeoLoss


def test_finite_with_duplicates_including_gradient() -> None:
    x = torch.randn(6, 16)
    x = torch.cat([x, x[:3]]).requires_grad_()  # three exact duplicates
    loss = KoLeoLoss()(x)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(x.grad).all()
    identical = KoLeoLoss()(torch.ones(4, 8))
    assert torch.isfinite(identical)


def test_batch_of_one_rejected() -> None:
    with pytest.raises(ValueError, match="at least 2 samples"):
        KoLeoLoss()(torch.randn(1, 8))


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_regular_simplex_closed_form(n: int) -> None:
    # Centred basis vectors: n unit vectors with pairwise dot −1/(n−1), all equidistant at
    # d = √(2n/(n−1)), so KoLeo = −log d. Scaled to check the normalisation too.
    z = torch.eye(n) - 1.0 / n
    x = 3.0 * z / z.norm(dim=1, keepdim=True)
    d = math.sqrt(2 * n / (n - 1))
    assert KoLeoLoss()(x).item() == pytest.approx(-math.log(d), abs=1e-6)


def test_fp32_for_low_precision_input() -> None:
    x = torch.randn(8, 32).half()
    loss = KoLeoLoss()(x)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_autocast_does_not_lower_precision() -> None:
    torch.manual_seed(0)
    x = torch.randn(16, 32)
    plain = KoLeoLoss()(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = KoLeoLoss()(x)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, plain, rtol=1e-6, atol=1e-6)
