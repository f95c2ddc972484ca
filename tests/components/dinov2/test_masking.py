"""BlockMaskGenerator and MultiCropCollate: stratified mask counts, layout, seeding (§3.3)."""

import random

import torch
from torch.utils.data import DataLoader

from datamodules.components.masking import BlockMaskGenerator
from datamodules.components.multicrop_collate import MultiCropCollate


def test_block_mask_count_never_exceeds_target_and_is_seeded() -> None:
    gen = BlockMaskGenerator(16)
    assert gen.num_patches == 256 and gen.max_num_patches == 128
    for target in (4, 25, 70, 128):
        for seed in range(5):
            mask = gen(target, random.Random(seed))
            assert mask.shape == (16, 16) and mask.dtype == torch.bool
            assert 0 < int(mask.sum()) <= target
    assert torch.equal(gen(50, random.Random(3)), gen(50, random.Random(3)))
    assert int(gen(0, random.Random(0)).sum()) == 0


def test_block_mask_reaches_target_approximately() -> None:
    gen = BlockMaskGenerator(16)
    fractions = [int(gen(100, random.Random(s)).sum()) / 100 for s in range(30)]
    assert sum(fractions) / len(fractions) > 0.8


def fake_samples(batch: int, n_local: int = 2, label: bool = False) -> list:
    samples = []
    for b in range(batch):
        crops = {
            "global_crops": [torch.full((3, 8, 8), 10.0 * b + g) for g in range(2)],
            "local_crops": [torch.full((3, 4, 4), 10.0 * b + 2 + i) for i in range(n_local)],
        }
        samples.append((crops, b) if label else crops)
    return samples


def test_collate_layout_weights_and_indices() -> None:
    batch_size, grid = 4, 16
    collate = MultiCropCollate(BlockMaskGenerator(grid), rng=random.Random(0))
    batch = collate(fake_samples(batch_size, label=True))
    # crop-major: [crop1 of all B; crop2 of all B]
    firsts = batch["global_crops"][:, 0, 0, 0].tolist()
    assert firsts == [0.0, 10.0, 20.0, 30.0, 1.0, 11.0, 21.0, 31.0]
    assert batch["local_crops"].shape == (2 * batch_size, 3, 4, 4)
    assert batch["local_crops"][:, 0, 0, 0].tolist() == [2.0, 12, 22, 32, 3, 13, 23, 33]
    assert batch["labels"].tolist() == [0, 1, 2, 3]

    masks = batch["masks"]
    assert masks.shape == (2 * batch_size, grid * grid) and masks.dtype == torch.bool
    assert torch.equal(batch["mask_indices"], masks.flatten().nonzero().flatten())
    assert int(batch["n_masked"]) == int(masks.sum()) == batch["mask_weights"].numel()
    counts = masks.sum(dim=1)
    crop_of_token = batch["mask_indices"] // (grid * grid)
    torch.testing.assert_close(batch["mask_weights"], 1.0 / counts[crop_of_token].float())
    # Σ_j w_j = number of masked crops
    assert batch["mask_weights"].sum().item() == float((counts > 0).sum())


def test_mask_counts_follow_stratified_ratios() -> None:
    """Half the 2B crops are masked, with ratios stratified over linspace(0.1, 0.5)."""
    batch_size, grid = 8, 16
    n_patches, n_crops = grid * grid, 2 * batch_size
    n_masked = n_crops // 2
    probs = torch.linspace(0.1, 0.5, n_masked + 1)
    collate = MultiCropCollate(BlockMaskGenerator(grid), rng=random.Random(0))
    sorted_counts = []
    for _ in range(40):
        counts = collate.make_masks(n_crops, collate.rng).sum(dim=1)
        assert int((counts > 0).sum()) == n_masked  # exactly half masked, half empty
        nonzero = counts[counts > 0].sort().values.float()
        # the achieved count never exceeds its target, which lies below its stratum's top
        assert (nonzero <= n_patches * probs[1:] + 1e-6).all()
        sorted_counts.append(nonzero / n_patches)
    mean_ratio = torch.stack(sorted_counts).mean(dim=0)
    midpoints = (probs[:-1] + probs[1:]) / 2
    torch.testing.assert_close(mean_ratio, midpoints, atol=0.04, rtol=0)


def test_masks_are_shuffled_and_seeded() -> None:
    def collate(seed: int) -> MultiCropCollate:
        return MultiCropCollate(BlockMaskGenerator(8), rng=random.Random(seed))

    a = collate(0)(fake_samples(6))["masks"]
    b = collate(0)(fake_samples(6))["masks"]
    assert torch.equal(a, b)
    # which of the 12 crops are masked changes with the shuffle
    masked_crops = set()
    for seed in range(10):
        masks = collate(seed).make_masks(12, random.Random(seed))
        masked_crops.add(tuple(masks.any(dim=1).nonzero().flatten().tolist()))
    assert len(masked_crops) > 1


def test_workers_get_distinct_seeded_masks() -> None:
    collate = MultiCropCollate(BlockMaskGenerator(8), seed=1)

    class Dataset(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 8

        def __getitem__(self, i: int) -> dict:
            return fake_samples(1, n_local=0)[0]

    def run() -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(7)
        loader = DataLoader(
            Dataset(), batch_size=2, num_workers=2, collate_fn=collate, generator=generator
        )
        return [batch["masks"] for batch in loader]

    first, second = run(), run()
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not torch.equal(first[0], first[1])  # batches from the two workers differ
    assert first[0].numel() and second[0].shape == (4, 64)
