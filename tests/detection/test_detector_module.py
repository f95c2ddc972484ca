"""GroundingDetectorLitModule: evaluation path, optimiser groups, schedule, checkpoint contents."""

import json
from pathlib import Path

import pytest
import torch
from helpers import compose_config
from hydra.utils import instantiate

from lightning_modules.grounding_detector_module import StepDropSchedule


def test_map_is_one_when_predictions_are_the_coco_ground_truth(
    tmp_path: Path, micro_overrides: list[str], make_module, monkeypatch
) -> None:
    """GT boxes read straight from the COCO json, fed as predictions through ``_evaluate``:
    checks the batch's target conversion (cxcywh → pixels) and the category-id mapping."""
    dm = instantiate(compose_config("train", micro_overrides, tmp_path).data)
    dm.prepare_data()
    dm.setup("validate")
    coco = json.loads((dm.synthetic_dir() / "val_seen.coco.json").read_text())
    by_image: dict[int, list] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)

    def from_json(batch) -> list[dict]:
        out = []
        for meta in batch["meta"]:
            anns = by_image.get(meta["image_id"], [])
            xywh = torch.tensor([a["bbox"] for a in anns]).view(-1, 4)
            boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
            labels = torch.tensor([a["category_id"] for a in anns], dtype=torch.long)
            out.append({"boxes": boxes, "scores": torch.ones(len(anns)), "labels": labels})
        return out

    module = make_module()
    for batch in dm.val_dataloader()[0]:
        monkeypatch.setattr(module, "predict_batch", lambda *a, b=batch, **k: from_json(b))
        module._evaluate(batch, "val")
    result = module.metrics["val"].compute()
    assert result["map"].item() == pytest.approx(1.0)


def test_step_drop_schedule() -> None:
    schedule = StepDropSchedule(drops=[10, 20], factor=0.1, warmup_steps=4)
    assert [schedule(s) for s in (0, 1, 3)] == [0.25, 0.5, 1.0]
    assert schedule(9) == 1.0 and schedule(10) == pytest.approx(0.1)
    assert schedule(25) == pytest.approx(0.01)


def test_lr_schedule_follows_the_config_after_resume(make_detector, tiny_text_encoder) -> None:
    """A resumed run takes its lr_drops from its own config, not from the checkpoint (LambdaLR
    restores a callable object's attributes, which once kept the first launch's drops)."""
    from functools import partial

    from lightning_modules.components.detection.matcher import HungarianMatcher
    from lightning_modules.components.losses.set_criterion import SetCriterion
    from lightning_modules.grounding_detector_module import GroundingDetectorLitModule

    def scheduler(drops: list[int]):
        module = GroundingDetectorLitModule(
            make_detector(), tiny_text_encoder, SetCriterion(HungarianMatcher()),
            partial(torch.optim.AdamW, lr=1e-4), lr_drops=drops, warmup_steps=0,
        )  # fmt: skip
        return module.configure_optimizers()["lr_scheduler"]["scheduler"]

    resumed = scheduler([5])
    resumed.load_state_dict(scheduler([3400]).state_dict())
    assert resumed.lr_lambdas[0](4) == 1.0
    assert resumed.lr_lambdas[0](5) == pytest.approx(0.1)


def test_optimizer_groups_and_checkpoint_contents(make_module) -> None:
    module = make_module()
    optimizer = module.configure_optimizers()["optimizer"]
    rest, backbone = optimizer.param_groups
    assert backbone["lr"] == pytest.approx(0.1 * rest["lr"])
    n_backbone = sum(p.numel() for p in module.detector.backbone.parameters())
    assert sum(p.numel() for p in backbone["params"]) == n_backbone
    text_ids = {id(p) for p in module.text_encoder.parameters()}
    assert not any(id(p) in text_ids for g in optimizer.param_groups for p in g["params"])
    state = module.state_dict()
    assert state and not any(k.startswith("text_encoder.") for k in state)
    fresh = make_module(seed=1)
    fresh.load_state_dict(state)  # strict: the missing text-encoder keys are expected
    for key, value in state.items():
        assert torch.equal(fresh.state_dict()[key], value), key
    with pytest.raises(RuntimeError, match="detector"):
        fresh.load_state_dict({k: v for k, v in state.items() if "class_heads" not in k})
