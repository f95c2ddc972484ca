"""Multi-crop collate with iBOT block masks (spec §3.3; reference ``dinov2/data/collate.py``)."""

import random
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import get_worker_info

from datamodules.components.masking import BlockMaskGenerator


class MultiCropCollate:
    """Samples of :class:`MultiCropTransform` crops → a crop-major batch with iBOT masks.

    Of the ``2B`` global crops, ``n_masked = int(2B·mask_probability)`` get a block mask whose
    target count is ``int(N·U(probs[i], probs[i+1]))`` with
    ``probs = linspace(ratio_min, ratio_max, n_masked + 1)``, which stratifies the mask ratios;
    the others get empty masks, and the list is shuffled so the two crops of one image are masked
    independently.

    Randomness comes only from a ``random.Random``: the one given (or seeded from ``seed``) in
    the main process; inside a DataLoader worker a per-worker one seeded from the worker's
    seed, re-created whenever that seed changes (new epoch), so workers draw different masks
    and a seeded DataLoader ``generator`` makes them reproducible.

    Args:
        mask_generator: block-mask generator on the global crops' patch grid (N patches).
        mask_probability: fraction of global crops that are masked (0.5).
        mask_ratio_range: (min, max) ratio range that is stratified (0.1, 0.5).
        rng: a seeded ``random.Random`` for the main process; or ``seed`` to build one.
    """

    def __init__(
        self,
        mask_generator: BlockMaskGenerator,
        mask_probability: float = 0.5,
        mask_ratio_range: tuple[float, float] = (0.1, 0.5),
        rng: random.Random | None = None,
        seed: int = 0,
    ) -> None:
        self.mask_generator = mask_generator
        self.mask_probability = mask_probability
        self.mask_ratio_range = tuple(mask_ratio_range)
        self.seed = seed
        self.rng = rng if rng is not None else random.Random(seed)
        self._worker_rng: tuple[int, random.Random] | None = None

    def _current_rng(self) -> random.Random:
        info = get_worker_info()
        if info is None:
            return self.rng
        if self._worker_rng is None or self._worker_rng[0] != info.seed:
            self._worker_rng = (info.seed, random.Random(f"{self.seed}/{info.seed}"))
        return self._worker_rng[1]

    def make_masks(self, n_crops: int, rng: random.Random) -> torch.Tensor:
        """Stratified, shuffled block masks for ``n_crops`` global crops → bool (n_crops, N)."""
        n_patches = self.mask_generator.num_patches
        n_masked = int(n_crops * self.mask_probability)
        probs = torch.linspace(*self.mask_ratio_range, n_masked + 1).tolist()
        masks = [
            self.mask_generator(int(n_patches * rng.uniform(probs[i], probs[i + 1])), rng).flatten()
            for i in range(n_masked)
        ]
        masks += [torch.zeros(n_patches, dtype=torch.bool)] * (n_crops - n_masked)
        rng.shuffle(masks)
        return torch.stack(masks)

    @staticmethod
    def _split(sample: Any) -> tuple[Mapping[str, Sequence[torch.Tensor]], Any]:
        if isinstance(sample, Mapping):
            return sample, None
        crops, target = sample  # (crops, label) from a labelled dataset
        return crops, target

    def __call__(self, samples: Sequence[Any]) -> dict[str, torch.Tensor]:
        """List of B samples (crop dicts, or ``(crop dict, label)``) → batch dict.

        Returns:
            ``global_crops`` (2B, 3, G, G) and ``local_crops`` (n_local·B, 3, L, L), crop-major
            (``[crop1 of all B; crop2 of all B; ...]``); ``masks`` (2B, N) bool;
            ``mask_indices`` (n_m,) long, flat indices into ``masks.flatten()`` (i.e. into the
            (2B·N) patch tokens); ``mask_weights`` (n_m,) float, ``1/max(1, #masked in crop)``;
            ``n_masked`` () long, n_m; ``labels`` (B,) when samples carry labels.
        """
        crops, targets = zip(*(self._split(s) for s in samples), strict=True)
        n_global = len(crops[0]["global_crops"])
        n_local = len(crops[0]["local_crops"])
        batch: dict[str, torch.Tensor] = {
            "global_crops": torch.stack(
                [c["global_crops"][i] for i in range(n_global) for c in crops]
            ),
            "local_crops": torch.stack([c["local_crops"][i] for i in range(n_local) for c in crops])
            if n_local
            else torch.empty(0),
        }
        masks = self.make_masks(n_global * len(samples), self._current_rng())
        per_crop = masks.sum(dim=-1, keepdim=True).clamp(min=1).float()
        batch["masks"] = masks
        batch["mask_indices"] = masks.flatten().nonzero().flatten()
        batch["mask_weights"] = (1.0 / per_crop).expand_as(masks)[masks]
        batch["n_masked"] = torch.tensor(int(batch["mask_indices"].numel()))
        if targets[0] is not None:
            is_tensor = isinstance(targets[0], torch.Tensor)
            batch["labels"] = torch.stack(targets) if is_tensor else torch.as_tensor(targets)
        return batch
