"""DINO-X through experiments/train.py (spec §15 test 12): fast_dev_run with each extension on
its own, prompt-tuning that changes only the universal prompt, exact resume with every head on,
and bad input to detect.py."""

import json
import math
import re
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import Crash, CrashAfterStep, compose_config, with_extra_callback

from experiments.detect import main as detect_main
from experiments.train import train

D = "model.detector"
#: micro sizes of the extension modules, on top of conftest's micro detector
MICRO_DINOX = [
    "experiment=gdino_dinox_tiny_synthetic", "model.visual_exemplar_images=2",
    "model.criterion.mask.num_points=64", f"{D}.visual_prompt.num_layers=1",
    f"{D}.visual_prompt.ffn_dim=64", f"{D}.keypoint_head.ffn_dim=64",
]  # fmt: skip
ONLY = {
    "mask": [f"{D}.universal_prompt=null", f"{D}.visual_prompt=null", f"{D}.keypoint_head=null",
             "model.train_prompts=[text]", "model.eval_prompts=[]"],
    "keypoint": [f"{D}.universal_prompt=null", f"{D}.visual_prompt=null", f"{D}.mask_head=null",
                 "model.train_prompts=[text]", "model.eval_prompts=[]"],
    "universal": [f"{D}.visual_prompt=null", f"{D}.mask_head=null", f"{D}.keypoint_head=null",
                  "model.train_prompts=[universal]", "model.eval_prompts=[universal]"],
    "visual": [f"{D}.mask_head=null", f"{D}.keypoint_head=null", "model.train_prompts=[visual]",
               "model.eval_prompts=[visual]"],
}  # fmt: skip
EXPECTED = {
    "mask": [
        "train/loss_mask_bce",
        "train/loss_mask_dice_0",
        "val/mask_mAP",
        "val_unseen/mask_mAP",
    ],
    "keypoint": ["train/loss_kpt_l1", "train/loss_kpt_oks_0", "train/loss_kpt_vis", "val/kpt_AP"],
    "universal": ["val/agnostic_mAP", "val/agnostic_mAP_50", "val/agnostic_mAR_100"],
    "visual": ["val/visual_mAP_50", "val/visual_text_mAP_50", "val_unseen/visual_mAP"],
}


def dinox_overrides(micro: list[str]) -> list[str]:
    return [*MICRO_DINOX, *micro[1:]]


@pytest.mark.parametrize("head", list(ONLY))
def test_fast_dev_run_per_extension(tmp_path: Path, micro_overrides: list[str], head: str) -> None:
    overrides = [*dinox_overrides(micro_overrides), *ONLY[head], "debug=fast_dev_run"]
    metrics = train(compose_config("train", overrides, tmp_path))
    assert math.isfinite(metrics["train/loss"]) and 0.0 <= metrics["val/mAP"] <= 1.0
    for key in EXPECTED[head]:
        value = metrics[key]
        # −1: torchmetrics' "no ground truth" (a micro split may leave none to search)
        assert math.isfinite(value) and (
            value == -1.0 or value >= 0.0 or key.startswith("train")
        ), key
    others = {k for h, keys in EXPECTED.items() if h != head for k in keys}
    assert not others & set(metrics), "heads that are off log nothing"


class FrozenInEvalMode(L.Callback):
    """Asserts at every training step that the frozen detector is in eval mode, the prompt not."""

    def on_train_batch_start(self, trainer: L.Trainer, module, *args) -> None:
        assert not module.detector.encoder.training and not module.detector.decoder.training
        assert module.detector.universal_prompt.training


def test_prompt_tuning_changes_only_the_universal_prompt(
    tmp_path: Path, micro_overrides: list[str], monkeypatch
) -> None:
    monkeypatch.setattr(
        "experiments.train.instantiate_callbacks", with_extra_callback(FrozenInEvalMode())
    )
    overrides = [*dinox_overrides(micro_overrides), "experiment=gdino_universal_prompt_tuning",
                 "trainer.max_steps=3", "trainer.limit_val_batches=0", "~callbacks.model_checkpoint",
                 "callbacks.periodic_checkpoint.every_n_train_steps=3"]  # fmt: skip
    cfg = compose_config("train", overrides, tmp_path)
    from hydra.utils import instantiate

    torch.manual_seed(cfg.seed)
    before = {k: v.clone() for k, v in instantiate(cfg.model).state_dict().items()}
    train(cfg)
    after = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    trainable = [pid for pid, _ in enumerate(after["optimizer_states"][0]["state"])]
    assert len(trainable) == 1, "one parameter (the prompt embedding) in the optimiser"
    changed = [k for k, v in after["state_dict"].items() if not torch.equal(v, before[k])]
    assert changed == ["detector.universal_prompt.embedding"]


def test_frozen_modules_get_no_gradient_and_stay_in_eval_mode(
    make_detector, tiny_text_encoder
) -> None:
    from dinox_batch import build_dinox_module

    module = build_dinox_module(make_detector, tiny_text_encoder,
                                {"frozen": ["detector.backbone"]}, universal_prompt={})  # fmt: skip
    module.train()
    assert not module.detector.backbone.training and module.detector.encoder.training
    assert not any(p.requires_grad for p in module.detector.backbone.parameters())
    assert all(p.requires_grad for p in module.detector.encoder.parameters())
    with pytest.raises(ValueError, match="no module 'detector.nothing'"):
        build_dinox_module(make_detector, tiny_text_encoder, {"frozen": ["detector.nothing"]})


def test_resume_is_bit_exact_with_every_head(
    tmp_path: Path, micro_overrides: list[str], monkeypatch
) -> None:
    n = 3
    overrides = [
        *dinox_overrides(micro_overrides), "model.train_prompts=[text,visual,universal]",
        "trainer=deterministic", f"trainer.max_steps={2 * n}", "trainer.max_epochs=-1",
        "trainer.val_check_interval=null", "trainer.check_val_every_n_epoch=1",
        "trainer.limit_val_batches=0", "~callbacks.model_checkpoint",
        f"callbacks.periodic_checkpoint.every_n_train_steps={n}",
    ]  # fmt: skip
    train(compose_config("train", overrides, tmp_path / "full"))
    monkeypatch.setattr(
        "experiments.train.instantiate_callbacks", with_extra_callback(CrashAfterStep(n))
    )
    with pytest.raises(Crash):
        train(compose_config("train", overrides, tmp_path / "first"))
    monkeypatch.undo()
    train(compose_config("train", [*overrides, f"resume_dir={tmp_path / 'first'}"],
                         tmp_path / "resumed"))  # fmt: skip
    full, again = (torch.load(tmp_path / r / "checkpoints" / "last.ckpt", weights_only=True)
                   for r in ("full", "resumed"))  # fmt: skip
    assert full["global_step"] == again["global_step"] == 2 * n
    assert any(k.startswith("detector.mask_head.") for k in full["state_dict"])
    for key, value in full["state_dict"].items():
        assert torch.equal(value, again["state_dict"][key]), key
    for pid, state in full["optimizer_states"][0]["state"].items():
        for name, tensor in state.items():
            assert torch.equal(tensor, again["optimizer_states"][0]["state"][pid][name]), (
                pid,
                name,
            )


def test_detect_rejects_bad_prompts(tmp_path: Path, micro_overrides: list[str], capsys) -> None:
    from torchvision.io import write_png

    from datamodules.components.synthetic_scenes import SyntheticScenes

    image = tmp_path / "scene.png"
    write_png(SyntheticScenes(None).render("val_seen", 0).image, str(image))
    args = ["--experiment", "gdino_dinox_tiny_synthetic", "--size", "128", "--max-size", "192",
            "--output-dir", str(tmp_path / "out")]  # fmt: skip
    for o in dinox_overrides(micro_overrides)[1:]:
        args += ["--override", o]
    cases = [
        ([], "exactly one of --prompt, --prompt-free or --visual-prompt"),
        (["--visual-prompt", f"{image}:10,10,300,40"], r"lies outside .*scene\.png \(256x256 px\)"),
        (["--visual-prompt", f"{image}:10,10"], None),
        (["--visual-prompt", f"{image}:1,2,3"], "bad --visual-prompt"),
        (["--prompt", "cat .", "--prompt-free"], "exactly one of"),
    ]
    for extra, message in cases:
        if message is None:  # a valid point prompt runs
            detect_main([str(image), *extra, *args, "--output-json", str(tmp_path / "v.json")])
            continue
        with pytest.raises(SystemExit) as exit_info:
            detect_main([str(image), *extra, *args])
        assert exit_info.value.code == 2
        assert re.search(message, capsys.readouterr().err), extra
    # the DINO-X API's special prompt text routes to the universal prompt
    detect_main([str(image), "--prompt", "<prompt_free>", "--box-threshold", "0", *args,
                 "--output-json", str(tmp_path / "free.json")])  # fmt: skip
    free = json.loads((tmp_path / "free.json").read_text())["images"][0]["detections"]
    assert free and {d["phrase"] for d in free} == {"object"} and len(free[0]["keypoints"]) == 5
    base = ["--experiment", "gdino_tiny_synthetic", "--size", "128", "--output-dir", str(tmp_path)]
    for o in micro_overrides[1:]:
        base += ["--override", o]
    with pytest.raises(SystemExit):
        detect_main([str(image), "--prompt-free", *base])
    assert "need a DINO-X model" in capsys.readouterr().err


def test_stage2_starts_from_stage1_with_the_backbone_frozen(
    tmp_path: Path, micro_overrides: list[str]
) -> None:
    steps = ["trainer.max_steps=2", "trainer.limit_val_batches=0", "~callbacks.model_checkpoint",
             "callbacks.periodic_checkpoint.every_n_train_steps=2"]  # fmt: skip
    train(compose_config("train", [*dinox_overrides(micro_overrides), *steps], tmp_path / "s1"))
    stage1 = tmp_path / "s1" / "checkpoints" / "last.ckpt"
    overrides = [*dinox_overrides(micro_overrides), "experiment=gdino_dinox_stage2_synthetic",
                 *steps, f"model.init_checkpoint={stage1}"]  # fmt: skip
    train(compose_config("train", overrides, tmp_path / "s2"))
    before = torch.load(stage1, weights_only=True)["state_dict"]
    after = torch.load(tmp_path / "s2" / "checkpoints" / "last.ckpt", weights_only=True)
    assert after["global_step"] == 2, "fresh step count: initialised, not resumed"
    changed = {k for k, v in after["state_dict"].items() if not torch.equal(v, before[k])}
    assert changed and not any(k.startswith("detector.backbone.") for k in changed)
    assert any(k.startswith("detector.keypoint_head.") for k in changed)
    assert "detector.universal_prompt.embedding" in changed  # a universal step ran
