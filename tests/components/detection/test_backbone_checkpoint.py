"""Backbone pretraining on item crops and loading its weights into the detector (issue 6)."""

import pytest
import torch

from datamodules.components.synthetic_scenes import load_items
from experiments.benchmarks.detector_backbone_pretrain import (
    ColourObjectClassifier,
    CropRenderer,
)
from lightning_modules.components.detection.backbone import TimmBackbone, load_timm_weights

SMALL = dict(channels=[8, 16, 32, 64], stem_width=8)


def test_crop_renderer_excludes_held_out_pairs() -> None:
    train = CropRenderer(None, "train", crop_size=32, min_scale=12, max_scale=24)
    n_c = train.n_colours
    held_out = train.scenes.held_out
    assert held_out and len(train.labels) == len(train.scenes.categories) - len(held_out)
    seen = set()
    for i in range(400):
        image, colour, obj = train.render(i)
        assert image.shape == (3, 32, 32) and image.dtype == torch.uint8
        seen.add(obj * n_c + colour)
    assert not seen & held_out
    assert len(seen) > len(train.labels) // 2  # the seen pairs are actually drawn
    assert train.bank is load_items(None, True)  # train-split items only
    unseen = CropRenderer(None, "val_unseen", crop_size=32, min_scale=12, max_scale=24)
    assert unseen.bank is load_items(None, False)
    drawn = {o * n_c + c for _, c, o in (unseen.render(i) for i in range(50))}
    assert drawn <= held_out
    # a pure function of (seed, split, index)
    a, b = train.render(7), train.render(7)
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


def test_crop_batch_is_normalised() -> None:
    x, c, o = CropRenderer(None, crop_size=32, min_scale=12, max_scale=24).batch(0, 5)
    assert x.shape == (5, 3, 32, 32) and x.dtype == torch.float32
    assert c.shape == o.shape == (5,) and x.min() < 0


def _save_classifier(path, **timm_kwargs) -> ColourObjectClassifier:
    model = ColourObjectClassifier(8, 10, "resnet18", **timm_kwargs)
    torch.save({"state_dict": model.body.state_dict(), "meta": {}}, path)
    return model


def test_backbone_checkpoint_loads_with_matching_keys(tmp_path) -> None:
    model = _save_classifier(tmp_path / "bb.pt", **SMALL)
    backbone = TimmBackbone("resnet18", out_indices=(2, 3, 4), checkpoint=str(tmp_path / "bb.pt"),
                            **SMALL)  # fmt: skip
    own = backbone.body.state_dict()
    assert set(own) == set(model.body.state_dict())
    for k, v in model.body.state_dict().items():
        assert torch.equal(own[k], v), k
    # the same weights give the same stage-4 features as the classifier's trunk
    model.eval(), backbone.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(backbone(x)[-1], model.body.forward_features(x), atol=1e-5)


def test_backbone_checkpoint_mismatch_errors_clearly(tmp_path) -> None:
    _save_classifier(tmp_path / "wide.pt", channels=[16, 32, 64, 128], stem_width=16)
    with pytest.raises(ValueError, match="shape mismatches"):
        TimmBackbone("resnet18", out_indices=(2, 3, 4), checkpoint=str(tmp_path / "wide.pt"),
                     **SMALL)  # fmt: skip
    _save_classifier(tmp_path / "small.pt", **SMALL)
    with pytest.raises(ValueError, match="missing"):  # a deeper net: layers absent in the file
        TimmBackbone("resnet34", out_indices=(2, 3, 4), checkpoint=str(tmp_path / "small.pt"),
                     **SMALL)  # fmt: skip
    with pytest.raises(ValueError, match="no weights under the prefix"):
        TimmBackbone("resnet18", out_indices=(2, 3, 4), checkpoint=str(tmp_path / "small.pt"),
                     checkpoint_prefix="detector.backbone.body.", **SMALL)  # fmt: skip
    with pytest.raises(FileNotFoundError, match="not found"):
        TimmBackbone("resnet18", checkpoint=str(tmp_path / "absent.pt"), **SMALL)


def test_load_timm_weights_from_a_detector_checkpoint_prefix(tmp_path) -> None:
    source = TimmBackbone("resnet18", out_indices=(2, 3, 4), **SMALL)
    state = {f"detector.backbone.body.{k}": v for k, v in source.body.state_dict().items()}
    state["detector.neck.proj.weight"] = torch.zeros(1)
    torch.save({"state_dict": state}, tmp_path / "det.ckpt")
    target = TimmBackbone("resnet18", out_indices=(2, 3, 4), **SMALL)
    load_timm_weights(target.body, tmp_path / "det.ckpt", "detector.backbone.body.")
    for k, v in source.body.state_dict().items():
        assert torch.equal(target.body.state_dict()[k], v)


def test_frozen_bn_stays_in_eval_mode() -> None:
    backbone = TimmBackbone("resnet18", out_indices=(2, 3, 4), frozen_bn=True, **SMALL).train()
    norms = [m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms)
    before = norms[0].running_mean.clone()
    backbone(torch.randn(2, 3, 64, 64))
    assert torch.equal(norms[0].running_mean, before)
