"""A region where autocast is off, so the numerically sensitive loss math stays in fp32."""

import torch


def fp32_region(reference: torch.Tensor) -> torch.autocast:
    """``with fp32_region(x):`` disables autocast on ``x``'s device type.

    ``.float()`` alone is not enough under ``bf16-mixed``: autocast would still run matmuls and
    einsums in bf16. Softmax, Sinkhorn-Knopp and KoLeo always run in fp32 (spec §5.4).
    """
    return torch.autocast(device_type=reference.device.type, enabled=False)
