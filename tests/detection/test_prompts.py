"""Universal and visual prompts (spec §12.1-12.2): shapes, group isolation, averaging, bad input."""

import pytest
import torch
from dinox_batch import build_dinox_module

from lightning_modules.components.detection.prompts import UniversalPrompt
from lightning_modules.components.detection.visual_prompt import (
    VisualPrompts,
    average_by_category,
    prompt_boxes_from_pixels,
)


def test_universal_prompt_is_one_always_visible_phrase() -> None:
    prompt = UniversalPrompt(dim=8, num_tokens=3)
    mem = prompt(batch_size=2)
    assert mem.memory_text.shape == (2, 3, 8)
    assert torch.equal(mem.memory_text[0], prompt.embedding) and torch.equal(
        mem.memory_text[1], prompt.embedding
    )
    assert mem.text_token_mask.all() and mem.submask.all() and mem.submask.shape == (2, 3, 3)
    assert mem.position_ids.tolist() == [[0, 1, 2], [0, 1, 2]]
    assert torch.equal(prompt.positive_map(2), torch.ones(2, 1, 3))


@pytest.fixture
def encoded(make_detector, synthetic_batch):
    """(detector, image features, encoder memory) of a 2-image batch, eval mode."""
    det = make_detector(universal_prompt={}, visual_prompt={"num_layers": 2, "ffn_dim": 64}).eval()
    batch = synthetic_batch(n=2)
    feats = det.image_features(batch["images"], batch["pad_mask"])
    memory, _ = det.encoder(feats, det.universal_memory(2))
    return det, feats, memory


def test_visual_prompt_vectors_are_per_group_and_isolated(encoded) -> None:
    det, feats, memory = encoded
    boxes = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.5, 0.3, 0.2], [0.5, 0.5, 0.0, 0.0],
                          [0.4, 0.6, 0.2, 0.3], [0.2, 0.2, 0.1, 0.1]])  # fmt: skip
    prompts = VisualPrompts(boxes, torch.tensor([0, 0, 0, 1, 1]), torch.tensor([0, 0, 1, 2, 3]))
    with torch.no_grad():
        vectors = det.visual_prompt(memory, feats, prompts)
        assert vectors.shape == (4, det.d_model) and torch.isfinite(vectors).all()
        # group 0 alone (same image, same boxes): other groups and images do not leak into it
        alone = VisualPrompts(boxes[:2], torch.tensor([0, 0]), torch.tensor([0, 0]))
        assert torch.allclose(det.visual_prompt(memory, feats, alone)[0], vectors[0], atol=1e-5)
        # the prompt's position matters: a moved box gives another vector
        moved = VisualPrompts(boxes[:2] + 0.1, torch.tensor([0, 0]), torch.tensor([0, 0]))
        assert not torch.allclose(det.visual_prompt(memory, feats, moved)[0], vectors[0], atol=1e-3)


def test_average_by_category_matches_manual_means() -> None:
    vectors = torch.randn(5, 4)
    ids, means = average_by_category(vectors, torch.tensor([7, 3, 7, 7, 3]))
    assert ids.tolist() == [3, 7]
    assert torch.allclose(means[0], (vectors[1] + vectors[4]) / 2)
    assert torch.allclose(means[1], (vectors[0] + vectors[2] + vectors[3]) / 3)


def test_visual_prompt_bank_averages_across_example_images(
    make_detector, tiny_text_encoder, synthetic_batch
) -> None:
    module = build_dinox_module(make_detector, tiny_text_encoder, universal_prompt={},
                                visual_prompt={"num_layers": 2, "ffn_dim": 64})  # fmt: skip
    batch = synthetic_batch(n=2)
    feats = module.detector.image_features(batch["images"], batch["pad_mask"])
    boxes = [torch.tensor([[0.3, 0.3, 0.2, 0.2]]), torch.tensor([[0.6, 0.6, 0.3, 0.3]])]
    ids, mean = module.visual_prompt_bank(feats, boxes, [torch.tensor([5]), torch.tensor([5])])
    singles = [module.visual_prompt_bank(feats.select(torch.tensor([b])), [boxes[b]],
                                         [torch.tensor([5])])[1] for b in range(2)]  # fmt: skip
    assert ids.tolist() == [5] and mean.shape == (1, module.detector.d_model)
    assert torch.allclose(mean, (singles[0] + singles[1]) / 2, atol=1e-5)


def test_pixel_prompts_normalise_and_reject_boxes_outside_the_image() -> None:
    box = prompt_boxes_from_pixels(torch.tensor([10.0, 20.0, 30.0, 60.0]), (100, 50), "a.png")
    assert torch.allclose(box, torch.tensor([[0.4, 0.4, 0.4, 0.4]]))
    point = prompt_boxes_from_pixels(torch.tensor([25.0, 50.0]), (100, 50), "a.png")
    assert torch.allclose(point, torch.tensor([[0.5, 0.5, 0.0, 0.0]]))
    with pytest.raises(ValueError, match=r"outside a\.png \(50x100 px\)"):
        prompt_boxes_from_pixels(torch.tensor([10.0, 20.0, 60.0, 60.0]), (100, 50), "a.png")
    with pytest.raises(ValueError, match="x2 < x1"):
        prompt_boxes_from_pixels(torch.tensor([30.0, 20.0, 10.0, 60.0]), (100, 50), "a.png")
    spans = VisualPrompts(torch.rand(2, 4), torch.tensor([0, 1]), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="spans several images"):
        spans.group_images()


def test_detector_without_prompts_explains_what_to_configure(
    make_detector, synthetic_batch
) -> None:
    det = make_detector()
    with pytest.raises(ValueError, match="universal_prompt"):
        det.universal_memory(1)
    with pytest.raises(ValueError, match="visual_prompt needs universal_prompt"):
        make_detector(visual_prompt={})
