"""Text–visual prompt alignment (T-Rex2 InfoNCE): golden test against a brute-force formula,
the pooling and anchor helpers, and that the loss trains the visual prompt encoder."""

import math

import pytest
import torch
from dinox_batch import build_dinox_module

from lightning_modules.components.detection.visual_text_alignment import (
    VisualTextAlignmentLoss,
    alignment_anchors,
    category_embeddings,
)


def brute_force_info_nce(visual, text, valid, target, tau: float, centre: bool) -> float:
    """−log softmax of cosine / τ, one anchor and one candidate at a time, in float64."""
    total = 0.0
    for n in range(len(visual)):
        cands = [c for c in range(text.shape[1]) if valid[n, c]]
        v = visual[n].double()
        ts = {c: text[n, c].double() for c in cands}
        if centre:
            mean = sum(ts.values()) / len(cands)
            v, ts = v - mean, {c: t - mean for c, t in ts.items()}
        logits = {c: float(v @ t / (v.norm() * t.norm())) / tau for c, t in ts.items()}
        log_z = math.log(sum(math.exp(x) for x in logits.values()))
        total += log_z - logits[int(target[n])]
    return total / len(visual)


@pytest.mark.parametrize("centre", [True, False])
def test_loss_matches_brute_force_info_nce(centre: bool) -> None:
    g = torch.Generator().manual_seed(0)
    visual, text = torch.randn(5, 8, generator=g), torch.randn(5, 6, 8, generator=g)
    text = text + 2.0  # a shared direction, as the name vectors have
    valid = torch.ones(5, 6, dtype=torch.bool)
    valid[1, 4:], valid[3, 2:] = False, False  # captions with fewer categories (padding)
    target = torch.tensor([0, 3, 5, 1, 2])
    loss = VisualTextAlignmentLoss(temperature=0.2, centre=centre)(visual, text, valid, target)
    expected = brute_force_info_nce(visual, text, valid, target, 0.2, centre)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_loss_rejects_padding_targets_and_handles_no_anchor() -> None:
    loss = VisualTextAlignmentLoss()
    valid = torch.tensor([[True, False]])
    with pytest.raises(ValueError, match="invalid"):
        loss(torch.randn(1, 4), torch.randn(1, 2, 4), valid, torch.tensor([1]))
    empty = torch.zeros(0, 4, requires_grad=True)
    out = loss(empty, torch.zeros(0, 2, 4), torch.zeros(0, 2, dtype=torch.bool),
               torch.zeros(0, dtype=torch.long))  # fmt: skip
    assert out.item() == 0.0 and out.requires_grad
    with pytest.raises(ValueError, match="temperature"):
        VisualTextAlignmentLoss(temperature=0.0)


def test_category_embeddings_average_each_name_tokens() -> None:
    memory = torch.randn(2, 5, 3)
    pmap = torch.zeros(2, 3, 5)
    pmap[0, 0, [1, 2]] = 1
    pmap[0, 1, 4] = 1
    pmap[1, 0, [0, 3, 4]] = 1  # image 1: one category, rows 1-2 padding
    emb = category_embeddings(memory, pmap)
    assert torch.allclose(emb[0, 0], memory[0, 1:3].mean(0))
    assert torch.allclose(emb[0, 1], memory[0, 4])
    assert torch.allclose(emb[1, 0], memory[1, [0, 3, 4]].mean(0))
    assert torch.equal(emb[0, 2], torch.zeros(3)) and torch.equal(emb[1, 1:], torch.zeros(2, 3))


def test_alignment_anchors_pair_each_gt_category_with_its_caption_index() -> None:
    ids = torch.tensor([3, 7, 9])  # visual vectors' category ids, sorted
    label_ids = [torch.tensor([7, 1, 3]), torch.tensor([2, 9, 5, 7])]
    cat_index = [torch.tensor([2, 0, 2]), torch.tensor([3, 1])]  # image 0: ids 3, 7, 3
    rows, images, targets = alignment_anchors(ids, label_ids, cat_index)
    assert rows.tolist() == [1, 0, 2, 1]  # ids 7, 3 (image 0), 9, 7 (image 1)
    assert images.tolist() == [0, 0, 1, 1]
    assert targets.tolist() == [0, 2, 1, 3]


def _visual_step(module, batch):
    prompt, targets = batch["prompts"][0], batch["targets"]
    feats = module.detector.image_features(batch["images"], batch["pad_mask"])
    *_, visual = module._prompted_forward("visual", feats, prompt, targets)
    return module._alignment_loss(feats, prompt, targets, *visual)


def test_alignment_loss_reaches_and_trains_the_visual_prompt_encoder(
    make_detector, tiny_text_encoder, synthetic_batch
) -> None:
    module = build_dinox_module(make_detector, tiny_text_encoder, {"align_weight": 1.0},
                                universal_prompt={},
                                visual_prompt={"num_layers": 1, "ffn_dim": 64})  # fmt: skip
    batch = synthetic_batch(n=2, max_labels=6)
    loss = _visual_step(module, batch)
    loss.backward()
    grads = [p.grad for p in module.detector.visual_prompt.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in module.detector.feat_map.parameters()), "text is a target"
    params = list(module.detector.visual_prompt.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    first = loss.item()
    for _ in range(15):
        opt.zero_grad()
        loss = _visual_step(module, batch)
        loss.backward()
        opt.step()
    assert loss.item() < 0.7 * first


def test_alignment_needs_the_visual_prompt_encoder(make_detector, tiny_text_encoder) -> None:
    with pytest.raises(ValueError, match="visual_prompt"):
        build_dinox_module(make_detector, tiny_text_encoder, {"align_weight": 1.0})


def test_alignment_is_logged_through_train(tmp_path, micro_overrides: list[str]) -> None:
    from helpers import compose_config

    from experiments.train import train

    d = "model.detector"
    overrides = [
        "experiment=gdino_dinox_tiny_synthetic", *micro_overrides[1:], "debug=fast_dev_run",
        "model.visual_exemplar_images=2", f"{d}.visual_prompt.num_layers=1",
        f"{d}.visual_prompt.ffn_dim=64", f"{d}.mask_head=null", f"{d}.keypoint_head=null",
        "model.train_prompts=[visual]", "model.eval_prompts=[visual]", "model.align_weight=1.0",
    ]  # fmt: skip
    metrics = train(compose_config("train", overrides, tmp_path))
    assert math.isfinite(metrics["train/loss_align"]) and metrics["train/loss_align"] > 0
