"""Spec §15 test 9 (generator part): determinism, held-out compositions, masks, keypoints."""

import os

import pytest
import torch
from torchvision.ops import masks_to_boxes

from datamodules.components.detection_augment import boxes_from_masks
from datamodules.components.synthetic_scenes import (
    SPLITS,
    SceneConfig,
    SyntheticScenes,
)


@pytest.fixture(scope="module")
def scenes() -> SyntheticScenes:
    return SyntheticScenes(os.environ.get("DATA_DIR"), seed=0)


def _equal(a, b) -> bool:
    return all(
        torch.equal(getattr(a, f), getattr(b, f))
        for f in ("image", "boxes", "labels", "masks", "keypoints")
    )


def test_deterministic_in_seed_split_index(scenes: SyntheticScenes) -> None:
    again = SyntheticScenes(scenes.data_root, seed=0)
    assert _equal(scenes.render("train", 5), again.render("train", 5))
    assert _equal(scenes.render("val_unseen", 2), scenes.render("val_unseen", 2))
    assert not torch.equal(scenes.render("train", 5).image, scenes.render("train", 6).image)
    other_seed = SyntheticScenes(scenes.data_root, seed=1)
    assert not torch.equal(scenes.render("train", 5).image, other_seed.render("train", 5).image)


def test_held_out_pairs_latin_square(scenes: SyntheticScenes) -> None:
    n_c = len(scenes.colours)
    train = set(scenes.split_labels("train"))
    unseen = set(scenes.split_labels("val_unseen"))
    assert train == set(scenes.split_labels("val_seen"))
    assert unseen == set(scenes.held_out) and not train & unseen
    assert train | unseen == set(range(len(scenes.categories)))
    # One colour per object is held out; every colour and every object is still trained on.
    assert sorted(x // n_c for x in unseen) == list(range(len(scenes.objects)))
    assert {x % n_c for x in train} == set(range(n_c))
    assert {x // n_c for x in train} == set(range(len(scenes.objects)))
    for index in range(15):  # the renderer draws labels from split_labels only
        assert not set(scenes.render("train", index).labels.tolist()) & unseen
        assert set(scenes.render("val_unseen", index).labels.tolist()) <= unseen
    with pytest.raises(ValueError, match="unknown split"):
        scenes.split_labels("test")


def test_masks_boxes_keypoints(scenes: SyntheticScenes) -> None:
    for index in range(10):
        scene = scenes.render("train", index)
        g = len(scene.labels)
        assert 0 <= g <= 6 and scene.image.shape == (3, 256, 256)
        assert scene.image.dtype == torch.uint8 and scene.masks.shape == (g, 256, 256)
        torch.testing.assert_close(scene.boxes, boxes_from_masks(scene.masks))
        torch.testing.assert_close(scene.boxes[:, :2], masks_to_boxes(scene.masks)[:, :2].float())
        assert (scene.masks.flatten(1).sum(1) > 0).all()
        # Visible masks never overlap (later items cut earlier ones).
        assert scene.masks.sum(0).max() <= 1
        x1, y1, x2, y2 = scene.boxes.unbind(-1)
        torch.testing.assert_close(scene.keypoints[:, 0, :2], torch.stack([x1, y1], -1))
        torch.testing.assert_close(scene.keypoints[:, 2, :2], torch.stack([x2, y2], -1))
        centroid = scene.keypoints[:, 4, :2]
        assert ((centroid >= scene.boxes[:, :2]) & (centroid <= scene.boxes[:, 2:])).all()


def test_occluded_items_dropped() -> None:
    # Many large items on a small canvas: heavy occlusion, some instances must be dropped.
    config = SceneConfig(canvas_size=64, min_items=6, max_items=6, min_scale=40, max_scale=60)
    scenes = SyntheticScenes(os.environ.get("DATA_DIR"), seed=0, config=config)
    counts = [len(scenes.render("train", i).labels) for i in range(10)]
    assert min(counts) < 6


def test_digits_fallback_without_data_root() -> None:
    scenes = SyntheticScenes(None, seed=0, config=SceneConfig(canvas_size=96, max_scale=48))
    assert len(scenes.objects) == 10 and scenes.categories[0] == "red zero"
    scene = scenes.render("val_seen", 0)
    assert scene.image.shape == (3, 96, 96)
    assert set(SPLITS) == {"train", "val_seen", "val_unseen"}


def test_related_labels_share_a_word(scenes: SyntheticScenes) -> None:
    related = scenes.related_labels("train")
    label = next(iter(related))
    name = scenes.categories[label]
    for other in related[label]:
        assert set(scenes.categories[other].split(" ", 1)) & set(name.split(" ", 1))
        assert other not in scenes.held_out
