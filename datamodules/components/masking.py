"""BEiT-style block masks for iBOT (spec §3.3; reference ``dinov2/data/masking.py``)."""

import math
import random

import torch


class BlockMaskGenerator:
    """Masks of random rectangular blocks on an ``(H, W)`` patch grid.

    For a target count T, rounds are repeated until T is reached or a round adds nothing. Each
    round allows ``remaining = min(T − count, max_num_patches)`` new patches and makes up to
    ``max_tries`` tries: area ~ U(min_num_patches, remaining), aspect log-uniform in
    ``[min_aspect, max_aspect]``, ``h = round(√(area·a))``, ``w = round(√(area/a))`` with
    ``h < H`` and ``w < W``, uniform placement; a try is accepted if it adds 1..remaining new
    patches. The achieved count is therefore at most T and approximate.

    All randomness comes from the ``random.Random`` passed to ``__call__`` (no global RNG), so
    masks are reproducible from a seed.

    Args:
        grid_size: ``S/p`` (square) or ``(H, W)`` patches.
        min_num_patches: smallest block area (4).
        max_num_patches: largest number of patches one round may add; default ``0.5·N``.
        min_aspect: smallest aspect ratio (0.3); ``max_aspect`` defaults to ``1/min_aspect``.
        max_tries: tries per round (10).
    """

    def __init__(
        self,
        grid_size: int | tuple[int, int],
        min_num_patches: int = 4,
        max_num_patches: float | None = None,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
        max_tries: int = 10,
    ) -> None:
        self.height, self.width = (
            (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
        )
        self.num_patches = self.height * self.width
        self.min_num_patches = min_num_patches
        self.max_num_patches = (
            0.5 * self.num_patches if max_num_patches is None else max_num_patches
        )
        max_aspect = max_aspect or 1.0 / min_aspect
        self.log_aspect_range = (math.log(min_aspect), math.log(max_aspect))
        self.max_tries = max_tries

    def _mask_round(self, mask: torch.Tensor, max_new: float, rng: random.Random) -> int:
        """One round of up to ``max_tries`` block tries on ``mask`` (H, W) in place; new count."""
        for _ in range(self.max_tries):
            area = rng.uniform(self.min_num_patches, max_new)
            aspect = math.exp(rng.uniform(*self.log_aspect_range))
            h = round(math.sqrt(area * aspect))
            w = round(math.sqrt(area / aspect))
            if not (h < self.height and w < self.width):
                continue
            top = rng.randint(0, self.height - h)
            left = rng.randint(0, self.width - w)
            block = mask[top : top + h, left : left + w]
            new = h * w - int(block.sum())
            if 0 < new <= max_new:
                block.fill_(True)
                return new
        return 0

    def __call__(self, num_masking_patches: int, rng: random.Random) -> torch.Tensor:
        """Target count T → bool mask (H, W) with about T (never more) masked patches."""
        mask = torch.zeros(self.height, self.width, dtype=torch.bool)
        count = 0
        while count < num_masking_patches:
            max_new = min(num_masking_patches - count, self.max_num_patches)
            added = self._mask_round(mask, max_new, rng)
            if added == 0:
                break
            count += added
        return mask
