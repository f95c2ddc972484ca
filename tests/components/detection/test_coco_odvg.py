"""Spec §15 test 9 (formats part) and bad inputs: ODVG/COCO round trip, augmentation, errors."""

import json
import os
from pathlib import Path

import pytest
import torch
from pycocotools import mask as mask_utils
from torchvision.io import write_png
from torchvision.ops import box_convert

from datamodules.components.coco_odvg import (
    AnnotationError,
    GroundingDataset,
    read_coco,
    read_odvg,
)
from datamodules.components.detection_augment import DetectionAugment, boxes_from_masks
from datamodules.components.synthetic_scenes import (
    KEYPOINT_FLIP_INDEX,
    SyntheticScenes,
    write_coco,
    write_odvg,
)

N_SCENES = 4


@pytest.fixture(scope="module")
def scenes() -> SyntheticScenes:
    return SyntheticScenes(os.environ.get("DATA_DIR"), seed=0)


@pytest.fixture(scope="module")
def written(scenes: SyntheticScenes, tmp_path_factory) -> tuple[Path, Path, Path, Path]:
    root = tmp_path_factory.mktemp("scenes")
    jsonl, label_map = write_odvg(scenes, "train", N_SCENES, root)
    coco = write_coco(scenes, "val_unseen", N_SCENES, root)
    return root, jsonl, label_map, coco


def _pixel_boxes(target: dict) -> torch.Tensor:
    h, w = target["size"]
    xyxy = box_convert(target["boxes"], "cxcywh", "xyxy")
    return xyxy * torch.tensor([w, h, w, h])


def test_odvg_round_trip(scenes, written) -> None:
    root, jsonl, label_map, _ = written
    assert set(json.loads(label_map.read_text())) == {str(i) for i in scenes.split_labels("train")}
    dataset = GroundingDataset(
        read_odvg(jsonl, label_map), root, with_masks=True, with_keypoints=True
    )
    assert len(dataset) == N_SCENES
    for index in range(N_SCENES):
        scene = scenes.render("train", index)
        image, target = dataset[index]
        assert torch.equal(image, scene.image)
        names = [target["categories"][c] for c in target["cat_index"].tolist()]
        assert names == [scenes.categories[x] for x in scene.labels.tolist()]
        assert target["category_id"].tolist() == scene.labels.tolist()
        torch.testing.assert_close(_pixel_boxes(target), scene.boxes, atol=0.01, rtol=0)
        assert torch.equal(target["masks"], scene.masks)
        kp = target["keypoints"] * torch.tensor([256.0, 256.0, 1.0])
        torch.testing.assert_close(kp, scene.keypoints, atol=0.01, rtol=0)


def test_coco_round_trip(scenes, written) -> None:
    root, _, _, coco = written
    records, id_to_index = read_coco(coco)
    assert set(id_to_index) == {i + 1 for i in scenes.split_labels("val_unseen")}
    dataset = GroundingDataset(records, root, with_masks=True)
    for index in range(N_SCENES):
        scene = scenes.render("val_unseen", index)
        image, target = dataset[index]
        assert torch.equal(image, scene.image) and target["image_id"] == index
        assert target["category_id"].tolist() == [x + 1 for x in scene.labels.tolist()]
        assert [id_to_index[i] for i in target["category_id"].tolist()] == target[
            "cat_index"
        ].tolist()
        torch.testing.assert_close(_pixel_boxes(target), scene.boxes, atol=1e-4, rtol=0)
        assert torch.equal(target["masks"], scene.masks)
    # Boxes follow pycocotools' pixel-extent convention.
    annotation = json.loads(coco.read_text())["annotations"][0]
    assert annotation["bbox"] == pytest.approx(
        mask_utils.toBbox(annotation["segmentation"]).tolist()
    )


@pytest.mark.parametrize("seed", range(8))
def test_augmentation_keeps_boxes_on_masks(written, seed: int) -> None:
    root, jsonl, label_map, _ = written
    # Output sizes ≥ 320 keep every resize an upsampling: nearest-neighbour downsampling can
    # erase a 1-px stroke of a mask (boxes are transformed exactly and then disagree).
    augment = DetectionAugment(
        scales=(320, 336), max_size=420, crop_prob=0.6, keypoint_flip_index=KEYPOINT_FLIP_INDEX
    )
    dataset = GroundingDataset(
        read_odvg(jsonl, label_map), root, augment=augment, with_masks=True, with_keypoints=True
    )
    image, target = dataset[(seed % N_SCENES, seed)]
    again = dataset[(seed % N_SCENES, seed)]
    assert torch.equal(image, again[0]) and torch.equal(target["boxes"], again[1]["boxes"])
    h, w = target["size"]
    assert image.shape == (3, h, w) and min(h, w) <= 336 and max(h, w) <= 420
    g = len(target["boxes"])
    assert target["masks"].shape == (g, h, w) and target["masks"].flatten(1).any(1).all()
    assert len(target["cat_index"]) == len(target["category_id"]) == len(target["keypoints"]) == g
    if g:
        diff = (_pixel_boxes(target) - boxes_from_masks(target["masks"])).abs()
        assert diff.max() <= 1.0


def test_default_augmentation_is_seeded_and_bounded(written) -> None:
    root, jsonl, label_map, _ = written
    dataset = GroundingDataset(read_odvg(jsonl, label_map), root, augment=DetectionAugment())
    sizes = set()
    for seed in range(6):
        image, target = dataset[(0, seed)]
        assert torch.equal(image, dataset[(0, seed)][0])
        assert min(image.shape[-2:]) in (224, 240, 256, 272, 288) or max(image.shape[-2:]) == 320
        assert ((target["boxes"] >= 0) & (target["boxes"] <= 1)).all()
        sizes.add(tuple(image.shape))
    assert len(sizes) > 1


def test_flip_and_resize_keep_keypoints_on_corners(written) -> None:
    root, jsonl, label_map, _ = written
    augment = DetectionAugment(
        flip_prob=1.0, crop_prob=0.0, keypoint_flip_index=KEYPOINT_FLIP_INDEX
    )
    dataset = GroundingDataset(
        read_odvg(jsonl, label_map), root, augment=augment, with_keypoints=True
    )
    plain = GroundingDataset(read_odvg(jsonl, label_map), root, with_keypoints=True)
    _, target = dataset[0]
    _, original = plain[0]
    h, w = target["size"]
    boxes = _pixel_boxes(target)
    kp = target["keypoints"][..., :2] * torch.tensor([w, h])
    torch.testing.assert_close(kp[:, 0], boxes[:, :2], atol=1.0, rtol=0)  # still top-left
    torch.testing.assert_close(kp[:, 2], boxes[:, 2:], atol=1.0, rtol=0)  # still bottom-right
    mirrored = 1 - original["keypoints"][:, 4, 0]
    torch.testing.assert_close(target["keypoints"][:, 4, 0], mirrored, atol=0.01, rtol=0)


def _write_jsonl(tmp_path: Path, lines: list) -> Path:
    path = tmp_path / "ann.jsonl"
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def _record(name: str, boxes: list, size: tuple[int, int] = (20, 30)) -> dict:
    instances = [{"bbox": b, "label": 0, "category": "cat"} for b in boxes]
    return {
        "filename": name,
        "height": size[0],
        "width": size[1],
        "detection": {"instances": instances},
    }


def test_corrupt_annotation_names_file_and_line(tmp_path: Path) -> None:
    good = _record("a.png", [[1, 1, 5, 5]])
    path = _write_jsonl(tmp_path, [good, good, '{"filename": "c.png", "height": 2'])
    with pytest.raises(AnnotationError, match=f"{path}:3: invalid JSON"):
        read_odvg(path)
    path = _write_jsonl(tmp_path, [good, _record("b.png", [[1, 2, 3]])])
    with pytest.raises(AnnotationError, match=f"{path}:2: bbox must be 4 numbers"):
        read_odvg(path)
    path = _write_jsonl(tmp_path, [{"height": 2, "width": 2, "detection": {"instances": []}}])
    with pytest.raises(AnnotationError, match=f"{path}:1: missing key 'filename'"):
        read_odvg(path)
    coco = tmp_path / "bad.json"
    coco.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "a.png", "height": 4, "width": 4}],
                "annotations": [{"id": 7, "image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1]}],
                "categories": [{"id": 1, "name": "cat"}],
            }
        )
    )
    with pytest.raises(AnnotationError, match="annotation 0, id 7.*category_id 3"):
        read_coco(coco)


def test_outside_and_zero_area_boxes(tmp_path: Path) -> None:
    record = _record("a.png", [[-5, 2, 10, 30], [4, 4, 4, 9], [40, 1, 50, 5], [2, 2, 6, 6]])
    records = read_odvg(_write_jsonl(tmp_path, [record]))
    assert records[0].num_clipped == 1 and records[0].num_dropped == 2
    assert records[0].boxes.tolist() == [[0.0, 2.0, 10.0, 20.0], [2.0, 2.0, 6.0, 6.0]]
    write_png(torch.zeros(3, 20, 30, dtype=torch.uint8), str(tmp_path / "a.png"))
    with pytest.warns(UserWarning, match="1 boxes clipped.*2 zero-area boxes dropped"):
        dataset = GroundingDataset(records, tmp_path)
    _, target = dataset[0]
    assert target["boxes"].shape == (2, 4) and (target["boxes"] <= 1).all()


@pytest.mark.parametrize("channels", [1, 4])
def test_grayscale_and_rgba_become_rgb(tmp_path: Path, channels: int) -> None:
    pixels = torch.randint(0, 256, (channels, 20, 30), dtype=torch.uint8)
    if channels == 4:  # torchvision's PNG encoder writes 1 or 3 channels only
        from PIL import Image

        Image.fromarray(pixels.permute(1, 2, 0).numpy(), mode="RGBA").save(tmp_path / "a.png")
    else:
        write_png(pixels, str(tmp_path / "a.png"))
    records = read_odvg(_write_jsonl(tmp_path, [_record("a.png", [[1, 1, 5, 5]])]))
    image, _ = GroundingDataset(records, tmp_path)[0]
    assert image.shape == (3, 20, 30) and image.dtype == torch.uint8
    if channels == 1:
        assert torch.equal(image, pixels.expand(3, -1, -1))
    else:
        assert torch.equal(image, pixels[:3])


def test_missing_image_and_size_mismatch(tmp_path: Path) -> None:
    records = read_odvg(_write_jsonl(tmp_path, [_record("missing.png", [[1, 1, 5, 5]])]))
    with pytest.raises(FileNotFoundError, match="missing.png.*ann.jsonl:1"):
        GroundingDataset(records, tmp_path)[0]
    with pytest.raises(FileNotFoundError, match="nothing.jsonl"):
        read_odvg(tmp_path / "nothing.jsonl")
    write_png(torch.zeros(3, 10, 10, dtype=torch.uint8), str(tmp_path / "small.png"))
    records = read_odvg(_write_jsonl(tmp_path, [_record("small.png", [[1, 1, 5, 5]])]))
    with pytest.raises(AnnotationError, match="annotated size 20x30"):
        GroundingDataset(records, tmp_path)[0]


def test_grounding_records_and_empty_images(tmp_path: Path) -> None:
    regions = [{"bbox": [1, 1, 5, 5], "phrase": "A dog"}, {"bbox": [2, 2, 9, 9], "phrase": "a cat"}]
    regions.append({"bbox": [3, 3, 8, 8], "phrase": "a dog"})
    grounding = {
        "filename": "a.png",
        "height": 20,
        "width": 30,
        "grounding": {"caption": "x", "regions": regions},
    }
    empty = _record("a.png", [])
    records = read_odvg(_write_jsonl(tmp_path, [grounding, empty]))
    assert records[0].categories == ["a dog", "a cat"]
    assert records[0].cat_index.tolist() == [0, 1, 0]
    write_png(torch.zeros(3, 20, 30, dtype=torch.uint8), str(tmp_path / "a.png"))
    dataset = GroundingDataset(records, tmp_path, augment=DetectionAugment(crop_prob=1.0))
    _, target = dataset[1]
    assert target["boxes"].shape == (0, 4) and target["cat_index"].shape == (0,)
