"""Wall-clock latency of a model's forward pass: warm-up, then the median of repeated runs."""

import statistics
import time

import torch
from torch import nn


@torch.no_grad()
def median_latency_ms(
    model: nn.Module,
    input_shape: tuple[int, ...],
    batch_size: int,
    repeats: int = 20,
    warmup: int = 3,
) -> float:
    """Median milliseconds of ``model(x)`` for one batch ``x (batch_size, *input_shape)``, eval mode."""
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    x = torch.randn(batch_size, *input_shape, dtype=param.dtype, device=param.device)
    try:
        for _ in range(warmup):
            model(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
    return 1000.0 * statistics.median(times)
