"""Spec §15 test 3: captions, positive maps, the token budget and chunking."""

import pytest
import torch

from datamodules.components.captions import (
    CaptionSampler,
    build_caption,
    chunk_categories,
    name_token_counts,
    positive_map,
)


def _rows(tokenizer, names: list[str]) -> tuple[list[str], torch.Tensor]:
    caption, spans = build_caption(names)
    enc = tokenizer([caption], return_tensors="pt")
    tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"][0])
    return tokens, positive_map(enc, spans, enc["input_ids"].shape[1], names=names)


def _owned(tokens: list[str], row: torch.Tensor) -> list[tuple[int, str]]:
    return [(i, tokens[i]) for i in row.nonzero().flatten().tolist()]


def test_build_caption_spans() -> None:
    caption, spans = build_caption(["hot dog", "dog"])
    assert caption == "hot dog . dog ."
    assert spans == [(0, 7), (10, 13)]
    assert [caption[b:e] for b, e in spans] == ["hot dog", "dog"]


@pytest.mark.parametrize("names", [["hot dog", "dog"], ["dog", "hot dog"]])
def test_dog_and_hot_dog(tokenizer, names: list[str]) -> None:
    tokens, pmap = _rows(tokenizer, names)
    owned = {name: _owned(tokens, row) for name, row in zip(names, pmap, strict=True)}
    hot = tokens.index("hot")
    assert owned["hot dog"] == [(hot, "hot"), (hot + 1, "dog")]
    dog_alone = [i for i, t in enumerate(tokens) if t == "dog" and i != hot + 1]
    assert owned["dog"] == [(dog_alone[0], "dog")]  # never the "dog" inside "hot dog"


def test_shirt_and_ankle_boot(tokenizer) -> None:
    tokens, pmap = _rows(tokenizer, ["t-shirt", "shirt", "ankle boot"])
    assert _owned(tokens, pmap[0]) == [(1, "t"), (2, "-"), (3, "shirt")]
    assert _owned(tokens, pmap[1]) == [(5, "shirt")]
    assert _owned(tokens, pmap[2]) == [(7, "ankle"), (8, "boot")]
    assert pmap.sum(0).max() == 1  # no token belongs to two categories


def test_boundary_fallback(tokenizer) -> None:
    caption = "cat . dog ."
    enc = tokenizer([caption], return_tensors="pt")
    # Spans that start and end on spaces fall back inward to the "dog" token.
    pmap = positive_map(enc, [(5, 10)], enc["input_ids"].shape[1])
    assert pmap[0].nonzero().flatten().tolist() == [3]


def test_truncated_span_raises(tokenizer) -> None:
    # [CLS] cat . traffic [SEP]: "traffic light" is cut in half, "hot dog" is gone.
    caption, spans = build_caption(["cat", "traffic light", "hot dog"])
    enc = tokenizer([caption], truncation=True, max_length=5, return_tensors="pt")
    with pytest.raises(ValueError, match="'traffic light'.*truncated"):
        positive_map(enc, spans, 5, names=["cat", "traffic light", "hot dog"])


def test_token_count_formula(tokenizer) -> None:
    names = ["t-shirt", "ankle boot", "traffic light", "dog", "hot dog"]
    caption, _ = build_caption(names)
    assert len(tokenizer(caption)["input_ids"]) == 2 + sum(name_token_counts(names, tokenizer))


def _label_map(n: int) -> dict[int, str]:
    # Multi-token names so that a budget of 256 holds far fewer than n of them.
    return {i: f"striped purple widget number {i}" for i in range(n)}


def test_budget_drops_and_counts_boxes(tokenizer) -> None:
    label_map = _label_map(120)
    sampler = CaptionSampler(label_map, tokenizer, max_tokens=256, max_labels=200)
    box_labels = torch.arange(100).repeat_interleave(2)  # 100 positives, 2 boxes each
    with pytest.warns(UserWarning, match="dropped"):
        out = sampler(box_labels, torch.Generator().manual_seed(0))
    assert len(tokenizer(out.caption)["input_ids"]) <= 256
    kept_labels = set(box_labels[out.keep].tolist())
    assert out.num_dropped_boxes == int((~out.keep).sum()) > 0
    assert out.num_dropped_boxes == 2 * (100 - len(kept_labels))
    assert kept_labels <= set(out.label_ids)
    names = [out.names[c] for c in out.cat_index.tolist()]
    assert names == [label_map[x] for x in box_labels[out.keep].tolist()]


def test_sampler_positives_negatives_and_determinism(tokenizer) -> None:
    label_map = {i: name for i, name in enumerate(["cat", "dog", "hot dog", "t-shirt", "shirt"])}
    label_map[5] = "Sofa/Couch"
    sampler = CaptionSampler(label_map, tokenizer, max_labels=4)
    box_labels = torch.tensor([2, 2, 0])
    out = sampler(box_labels, torch.Generator().manual_seed(3))
    again = sampler(box_labels, torch.Generator().manual_seed(3))
    assert (out.caption, out.label_ids) == (again.caption, again.label_ids)
    assert torch.equal(out.cat_index, again.cat_index)
    assert {0, 2} <= set(out.label_ids) and len(out.label_ids) == 4
    assert out.num_dropped_boxes == 0 and out.keep.all()
    assert [out.names[c] for c in out.cat_index.tolist()] == ["hot dog", "hot dog", "cat"]
    enc = tokenizer([out.caption], return_tensors="pt")
    positive_map(enc, out.spans, enc["input_ids"].shape[1], names=out.names)  # spans valid
    captions = {sampler(box_labels, torch.Generator().manual_seed(s)).caption for s in range(30)}
    assert len(captions) > 5  # shuffled and resampled
    assert any("sofa" in c for c in captions) and any("couch" in c for c in captions)
    assert all("sofa/couch" not in c for c in captions)


def test_sampler_prefers_related_negatives(tokenizer) -> None:
    label_map = {i: f"thing {i}" for i in range(40)}
    related = {0: [1, 2, 3, 4]}
    sampler = CaptionSampler(label_map, tokenizer, max_labels=9, related=related, hard_fraction=0.5)
    for seed in range(5):
        out = sampler(torch.tensor([0]), torch.Generator().manual_seed(seed))
        assert {1, 2, 3, 4} <= set(out.label_ids)


def test_chunking_covers_every_category(tokenizer) -> None:
    names = [f"striped purple widget number {i}" for i in range(150)]
    chunks = chunk_categories(names, tokenizer, max_tokens=256)
    assert [i for chunk in chunks for i in chunk] == list(range(150))
    assert len(chunks) > 1
    for chunk in chunks:
        caption, _ = build_caption([names[i] for i in chunk])
        assert len(tokenizer(caption)["input_ids"]) <= 256


def test_overlong_name_raises(tokenizer) -> None:
    with pytest.raises(ValueError, match="needs .* tokens"):
        chunk_categories(["cat", "word " * 300], tokenizer)


def test_empty_inputs_raise() -> None:
    with pytest.raises(ValueError, match="at least one"):
        build_caption([])
    with pytest.raises(ValueError, match="empty category name"):
        build_caption(["cat", "  "])


def test_sampler_balances_hard_negatives_across_shared_words(tokenizer) -> None:
    # 4 colours x 8 objects: "red one" has 3 same-object and 7 same-colour relatives; drawn from
    # their union, same-object negatives would be rare; round-robin gives each word its share.
    colours, objects = ["red", "blue", "green", "white"], ["one", "two", "three", "four",
                                                          "five", "six", "seven", "eight"]  # fmt: skip
    names = [f"{c} {o}" for o in objects for c in colours]
    label_map = dict(enumerate(names))
    words = {i: set(n.split()) for i, n in label_map.items()}
    related = {a: [b for b in label_map if b != a and words[a] & words[b]] for a in label_map}
    sampler = CaptionSampler(label_map, tokenizer, max_labels=7, related=related, hard_fraction=1.0)
    for seed in range(5):
        out = sampler(torch.tensor([0]), torch.Generator().manual_seed(seed))  # "red one"
        negatives = [label_map[x].split() for x in out.label_ids if x != 0]
        assert len(negatives) == 6
        assert sum(o == "one" for _, o in negatives) == 3  # every other colour of "one"
        assert sum(c == "red" for c, _ in negatives) == 3
