"""Inference (spec §15 test 10): batched per-image prompts equal per-image calls; chunked
inference over > 256 tokens returns every category."""

import os

import torch

from datamodules.components.detection_collate import build_prompt_chunks
from datamodules.components.synthetic_scenes import SceneConfig, SyntheticScenes
from experiments.detect import GroundingPredictor


def _images(n: int) -> list[torch.Tensor]:
    scenes = SyntheticScenes(os.environ.get("DATA_DIR"), config=SceneConfig(canvas_size=128))
    return [scenes.render("val_seen", i).image for i in range(n)]


def test_batched_prompts_equal_per_image_calls(make_module) -> None:
    predictor = GroundingPredictor(make_module(), size=128, max_size=128, box_threshold=0.0,
                                   num_select=20)  # fmt: skip
    images = _images(3)
    prompts = [["red zero", "blue shirt"], ["green bag", "white ankle boot", "yellow three"],
               ["cat"]]  # fmt: skip
    batched = predictor(images, prompts)
    for image, prompt, together in zip(images, prompts, batched, strict=True):
        alone = predictor([image], [prompt])[0]
        assert len(alone) == len(together) == 20
        assert [d.phrase for d in alone] == [d.phrase for d in together]
        torch.testing.assert_close(torch.tensor([d.score for d in together]),
                                   torch.tensor([d.score for d in alone]), atol=1e-5, rtol=0)  # fmt: skip
        torch.testing.assert_close(torch.tensor([d.box for d in together]),
                                   torch.tensor([d.box for d in alone]), atol=1e-4, rtol=0)  # fmt: skip


def test_chunked_inference_returns_every_category(make_module, tiny_text_encoder) -> None:
    names = SyntheticScenes(os.environ.get("DATA_DIR")).categories  # 160 "colour object" names
    chunks = build_prompt_chunks(tiny_text_encoder.tokenizer, [names])
    assert len(chunks) >= 3, "over 256 tokens: several captions"
    assert all(c.input_ids.shape[1] <= 256 for c in chunks)
    assert sorted(i for c in chunks for i in c.label_ids[0].tolist()) == list(range(len(names)))
    predictor = GroundingPredictor(make_module(), size=128, max_size=128, box_threshold=0.0,
                                   num_select=30 * len(names))  # fmt: skip
    detections = predictor(_images(1), [names])[0]
    assert {d.phrase for d in detections} == set(names)
    assert {d.category_index for d in detections} == set(range(len(names)))
