"""frozen_paths / freeze: "train only these" splits ancestors, unknown paths are rejected."""

import pytest
from torch import nn

from lightning_modules.components.freezing import freeze, frozen_paths


def _model() -> nn.Module:
    inner = nn.ModuleDict({"x": nn.Linear(2, 2), "y": nn.Linear(2, 2)})
    return nn.ModuleDict({"detector": nn.ModuleDict({"a": inner, "b": nn.Linear(2, 2)})})


def test_trainable_leaf_freezes_its_siblings_and_the_rest() -> None:
    model = _model()
    paths = frozen_paths(model, "detector", ["detector.a.x"])
    assert sorted(paths) == ["detector.a.y", "detector.b"]
    freeze(model, paths)
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == ["detector.a.x.bias", "detector.a.x.weight"]


def test_frozen_list_and_unknown_paths() -> None:
    model = _model()
    assert frozen_paths(model, "detector", None, ["detector.b"]) == ["detector.b"]
    assert frozen_paths(model, "detector", None) == []
    with pytest.raises(ValueError, match="no module 'detector.c'"):
        frozen_paths(model, "detector", ["detector.c"])
