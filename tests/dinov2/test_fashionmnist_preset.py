"""The Fashion-MNIST benchmark preset trains its 4-block backbone at one lr (no layer-wise decay)."""

from pathlib import Path

from helpers import compose_config
from hydra.utils import instantiate


def test_fashionmnist_preset_gives_every_parameter_the_full_lr(tmp_path: Path) -> None:
    cfg = compose_config("train", ["experiment=dinov2_tiny_fashionmnist"], tmp_path)
    assert cfg.model.optim.layer_decay == 1.0 and cfg.model.optim.patch_embed_lr_multiplier == 1.0
    groups = instantiate(cfg.model).build_optimizer().param_groups
    names = [n for g in groups for n in g["param_names"]]
    assert any("patch_embed" in n for n in names) and any("blocks.0." in n for n in names)
    assert {g["lr_multiplier"] for g in groups} == {1.0}
