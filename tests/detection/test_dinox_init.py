"""DINO-X initialisation from a checkpoint that lacks the extension modules (stage 2 from a
Grounding-DINO run), and the held-out split overrides of experiments/benchmarks/dinox_synthetic.py."""

import logging
from pathlib import Path

import torch
from helpers import compose_config
from hydra.utils import instantiate

from experiments.benchmarks.dinox_synthetic import held_out_overrides
from lightning_modules.dinox_detector_module import EXTENSION_MODULES
from lightning_modules.grounding_detector_module import new_modules

MICRO_DINOX = [
    "experiment=gdino_dinox_tiny_synthetic", "model.criterion.mask.num_points=64",
    "model.detector.visual_prompt.num_layers=1", "model.detector.visual_prompt.ffn_dim=64",
    "model.detector.keypoint_head.ffn_dim=64",
]  # fmt: skip


def test_new_modules_counts_tensors_per_module() -> None:
    keys = ["mask_head.pixel.weight", "mask_head.pixel.bias", "universal_prompt.embedding"]
    assert new_modules(keys) == {"mask_head.pixel": 2, "universal_prompt.embedding": 1}
    assert new_modules([]) == {}


def test_init_from_a_text_checkpoint_names_the_new_modules(
    tmp_path: Path, micro_overrides: list[str], caplog
) -> None:
    cfg = compose_config("train", [*MICRO_DINOX, *micro_overrides[1:]], tmp_path)
    torch.manual_seed(0)
    source = instantiate(cfg.model)
    text_only = {k: v for k, v in source.state_dict().items()
                 if not k.removeprefix("detector.").startswith(EXTENSION_MODULES)}  # fmt: skip
    path = tmp_path / "text.ckpt"
    torch.save({"state_dict": text_only}, path)
    torch.manual_seed(1)
    target = instantiate(cfg.model)
    with caplog.at_level(logging.INFO, logger="lightning_modules.grounding_detector_module"):
        target.init_from_checkpoint(str(path))
    message = caplog.text
    assert "freshly initialised" in message
    for module in ("universal_prompt", "visual_prompt", "mask_head", "keypoint_head"):
        assert module in message
    loaded = target.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in text_only.items())


def test_held_out_overrides_reach_the_eval_data_config(tmp_path: Path) -> None:
    overrides = ["ckpt_path=x.ckpt", *held_out_overrides(seed=1, n_test=200)]
    data = compose_config("eval", overrides, tmp_path).data
    assert dict(data.synthetic) == {"seed": 1, "n_val": 200, "n_train": 1}
