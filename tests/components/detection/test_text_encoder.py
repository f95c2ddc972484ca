"""Spec §15 test 4: sub-sentence isolation, mask structure, cache and bad prompts."""

import pytest
import torch

from lightning_modules.components.detection.text_encoder import TextEncoder, sub_sentence_mask


def test_mask_structure_and_positions(tiny_text_encoder) -> None:
    enc = tiny_text_encoder.tokenize(["cat . traffic light .", "dog ."])
    submask, pos = sub_sentence_mask(
        enc["input_ids"], enc["attention_mask"], tiny_text_encoder.special_ids
    )
    # [CLS] cat . traffic light . [SEP] | [CLS] dog . [SEP] pad pad pad
    assert pos.tolist() == [[0, 0, 1, 0, 1, 2, 0], [0, 0, 1, 0, 0, 0, 0]]
    blocks = [[0], [1, 2], [3, 4, 5], [6]]
    expected = torch.zeros(7, 7, dtype=torch.bool)
    for block in blocks:
        expected[torch.tensor(block)[:, None], torch.tensor(block)] = True
    assert torch.equal(submask[0], expected)
    # Padding attends only to itself and nobody attends to padding.
    expected = torch.zeros(7, 7, dtype=torch.bool)
    for block in [[0], [1, 2], [3], [4], [5], [6]]:
        expected[torch.tensor(block)[:, None], torch.tensor(block)] = True
    assert torch.equal(submask[1], expected)


def test_sub_sentence_isolation_is_exact(minilm_text_encoder) -> None:
    captions = ["cat . dog .", "cat . traffic light . hot dog ."]
    feats = minilm_text_encoder.encode(captions)
    assert feats.feats.shape[-1] == 384
    assert (feats.feats[0, 1] - feats.feats[1, 1]).abs().max().item() == 0.0
    # The plain 2-D mask lets "cat" see the other phrases, so the test can fail.
    plain = TextEncoder(
        minilm_text_encoder.model, minilm_text_encoder.tokenizer, sub_sentence=False, cache_size=0
    )
    leaky = plain.encode(captions)
    assert (leaky.feats[0, 1] - leaky.feats[1, 1]).abs().max().item() > 0.1


def test_three_d_mask_rejected(tiny_text_encoder) -> None:
    enc = tiny_text_encoder.tokenize(["cat . dog ."])
    t = enc["input_ids"].shape[1]
    with pytest.raises(ValueError, match="3-D"):
        tiny_text_encoder(enc["input_ids"], torch.ones(1, t, t, dtype=torch.long))


def test_bad_prompts_raise(tiny_text_encoder) -> None:
    with pytest.raises(ValueError, match="empty"):
        tiny_text_encoder.encode(["cat .", "  "])
    with pytest.raises(ValueError, match="at least one caption"):
        tiny_text_encoder.encode([])
    long_caption = " . ".join(f"thing{i}" for i in range(200)) + " ."
    with pytest.raises(ValueError, match="max_len=256.*chunk_categories"):
        tiny_text_encoder.encode([long_caption])
    ids = torch.tensor([[101, 1012, 102]])  # [CLS] . [SEP]: no category token
    with pytest.raises(ValueError, match="empty prompt"):
        tiny_text_encoder(ids, torch.ones_like(ids))


def test_frozen_cache_and_padding_independence() -> None:
    encoder = TextEncoder.tiny_random(seed=1, cache_size=2)
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.model.training  # frozen stays in eval mode
    single = encoder.encode(["hot dog ."])
    assert len(encoder._cache) == 1
    batch = encoder.encode(["cat . traffic light . hot dog .", "hot dog ."])
    assert batch.feats.shape[:2] == batch.text_token_mask.shape
    n = int(single.text_token_mask.sum())
    torch.testing.assert_close(batch.feats[1, :n], single.feats[0], atol=1e-5, rtol=0)
    assert batch.feats[1, n:].abs().sum() == 0  # padding positions are zeros
    fresh = TextEncoder(encoder.model, encoder.tokenizer, cache_size=0).encode(
        ["cat . traffic light . hot dog ."]
    )
    torch.testing.assert_close(batch.feats[0], fresh.feats[0], atol=1e-5, rtol=0)
    encoder.encode(["zebra ."])
    assert len(encoder._cache) == 2  # LRU: the oldest entry was evicted
    many = encoder.encode(["a .", "b .", "c .", "hot dog ."])  # more misses than the cache holds
    torch.testing.assert_close(many.feats[3, :n], single.feats[0], atol=1e-5, rtol=0)


def test_unfrozen_encoder_trains() -> None:
    encoder = TextEncoder.tiny_random(seed=2, frozen=False)
    encoder.train()
    feats = encoder.encode(["cat . dog ."])
    feats.feats.sum().backward()
    assert encoder.model.embeddings.word_embeddings.weight.grad is not None
    assert encoder.cache_size == 0


def test_block_cache_matches_whole_captions(minilm_text_encoder) -> None:
    blocks = TextEncoder(minilm_text_encoder.model, minilm_text_encoder.tokenizer,
                         cache_by="block", cache_size=64)  # fmt: skip
    captions = ["red seven . blue t-shirt .", "blue t-shirt . ankle boot . cat ."]
    whole = minilm_text_encoder.encode(captions)
    cached = blocks.encode(captions)
    assert torch.equal(whole.text_token_mask, cached.text_token_mask)
    assert torch.equal(whole.position_ids, cached.position_ids)
    real = whole.text_token_mask
    assert (cached.feats[real] - whole.feats[real]).abs().max().item() < 1e-4  # rounding only
    assert cached.feats[0, 10:].abs().sum().item() == 0.0  # padding of the shorter caption
    # [CLS], [SEP] and 4 distinct phrases: one entry per block, shared across captions.
    assert len(blocks._cache) == 6
    again = blocks.encode(["cat . red seven ."])
    assert len(blocks._cache) == 6  # both phrases were cached from other captions
    assert torch.equal(again.feats[0, 1:3], cached.feats[1, 9:11])  # "cat ." bit-identical


def test_block_cache_needs_sub_sentence(tiny_text_encoder) -> None:
    with pytest.raises(ValueError, match="sub_sentence"):
        TextEncoder(tiny_text_encoder.model, tiny_text_encoder.tokenizer, sub_sentence=False,
                    cache_by="block")  # fmt: skip
    with pytest.raises(ValueError, match="cache_by"):
        TextEncoder(tiny_text_encoder.model, tiny_text_encoder.tokenizer, cache_by="word")
