"""Captions for text-prompted detection: explicit spans, positive maps, budgets and chunks.

A caption is category names joined by ``" . "`` and ending in ``" ."`` (spec §5, decision P7).
Each name's character span is recorded *while* the caption is built, because locating names
afterwards with ``str.find`` finds the first occurrence: in ``"hot dog . dog ."`` the category
"dog" would point into "hot dog" (the Open-GroundingDino bug).

Token counting assumes a BERT-style tokenizer that splits on whitespace and punctuation, so a
caption's length is ``2 + Σ (tokens(name) + 1)``: [CLS] + [SEP], and one "." per name. Callers
that feed the result to a model still tokenise the real caption, and ``positive_map`` raises if
a span was truncated away, so a tokenizer breaking this assumption cannot fail silently.
"""

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

Span = tuple[int, int]  # [begin, end) character offsets of one category name in its caption

SEPARATOR = " . "
SPECIAL_TOKENS_PER_CAPTION = 2  # [CLS] and [SEP]


def build_caption(names: Sequence[str]) -> tuple[str, list[Span]]:
    """``["cat", "hot dog"]`` → ``("cat . hot dog .", [(0, 3), (6, 13)])``.

    Names are used as given (lower-case them before); spans are ``[begin, end)``.
    """
    if not names:
        raise ValueError("build_caption needs at least one category name")
    caption, spans = "", []
    for name in names:
        if not name.strip():
            raise ValueError(f"empty category name in {list(names)!r}")
        begin = len(caption)
        caption += name
        spans.append((begin, len(caption)))
        caption += SEPARATOR
    return caption.rstrip(), spans  # "a . b . " → "a . b ." ends with " ." exactly once


def _first_token(encoding: Any, batch_index: int, chars: Sequence[int], span: Span) -> int | None:
    for char in chars:
        if not span[0] <= char < span[1]:  # a retry never leaves the name
            continue
        token = encoding.char_to_token(batch_index, char)
        if token is not None:
            return token
    return None


def positive_map(
    encoding: Any,
    spans: Sequence[Span],
    num_tokens: int,
    batch_index: int = 0,
    names: Sequence[str] | None = None,
) -> torch.Tensor:
    """Token membership of each category: ``(C, num_tokens)`` float 0/1.

    ``encoding`` is a fast tokenizer's ``BatchEncoding`` (it provides ``char_to_token``). A span's
    first/last character that maps to no token (e.g. a space) is retried ±1, then ±2 characters
    inward. A span with no token at all (typically truncated away) raises, naming the category:
    a silently empty row would make that category undetectable.
    """
    pmap = torch.zeros(len(spans), num_tokens)
    for c, (begin, end) in enumerate(spans):
        span = (begin, end)
        first = _first_token(encoding, batch_index, [begin, begin + 1, begin + 2], span)
        last = _first_token(encoding, batch_index, [end - 1, end - 2, end - 3], span)
        if first is None or last is None or last < first or last >= num_tokens:
            label = repr(names[c]) if names is not None else f"#{c}"
            raise ValueError(
                f"category {label} (characters {begin}:{end}) maps to no token of caption "
                f"{batch_index}: it was probably truncated; keep captions within the token "
                "budget (CaptionSampler) or split them (chunk_categories)"
            )
        pmap[c, first : last + 1] = 1.0
    return pmap


def name_token_counts(names: Sequence[str], tokenizer: Any) -> list[int]:
    """Tokens each name adds to a caption, its trailing "." included."""
    ids = tokenizer(list(names), add_special_tokens=False)["input_ids"]
    return [len(x) + 1 for x in ids]


def chunk_categories(
    names: Sequence[str], tokenizer: Any, max_tokens: int = 256
) -> list[list[int]]:
    """Greedy split of a category list into captions that each fit ``max_tokens``.

    Returns lists of indices into ``names``, in order, covering every category exactly once
    (spec §10: no category is ever dropped at inference). A single name that cannot fit even
    alone raises ``ValueError``.
    """
    budget = max_tokens - SPECIAL_TOKENS_PER_CAPTION
    chunks: list[list[int]] = []
    used = budget + 1  # forces a new chunk for the first name
    for i, count in enumerate(name_token_counts(names, tokenizer)):
        if count > budget:
            raise ValueError(
                f"category {names[i]!r} needs {count} tokens, more than the {budget} a "
                f"{max_tokens}-token caption leaves: shorten the name"
            )
        if used + count > budget:
            chunks.append([])
            used = 0
        chunks[-1].append(i)
        used += count
    return chunks


@dataclass(frozen=True, eq=False)  # tensors inside: compare fields explicitly
class SampledCaption:
    """One training caption and how the image's boxes map into it.

    ``label_ids[c]`` is the label-map id of caption category ``c``; ``keep`` (G,) bool selects the
    boxes whose category fits the budget; ``cat_index`` (G_kept,) indexes ``names``/``spans``.
    """

    caption: str
    spans: list[Span]
    names: list[str]
    label_ids: list[int]
    keep: torch.Tensor
    cat_index: torch.Tensor
    num_dropped_boxes: int


class CaptionSampler:
    """Training captions: positives first, sampled negatives, shuffled, within a token budget.

    Follows Open-GroundingDino's ``odvg.py`` (fill up to ``max_labels`` categories) with the
    budget of spec §5: positives are added (in random order) while they fit, boxes of positives
    that do not fit are dropped and counted, then negatives drawn without replacement fill what
    remains. All randomness comes from the generator passed per call, so a sample is a pure
    function of its seed (exact resume). A name holding "/"-separated synonyms uses one at random.
    """

    def __init__(
        self,
        label_map: dict[int, str],
        tokenizer: Any,
        max_tokens: int = 256,
        max_labels: int = 50,
        related: Mapping[int, Sequence[int]] | None = None,
        hard_fraction: float = 0.5,
    ) -> None:
        if not label_map:
            raise ValueError("CaptionSampler needs a non-empty label map")
        self.label_ids = sorted(label_map)
        self.synonyms = {i: [s.strip().lower() for s in label_map[i].split("/")] for i in label_map}
        all_names = sorted({s for names in self.synonyms.values() for s in names})
        self.token_counts = dict(
            zip(all_names, name_token_counts(all_names, tokenizer), strict=True)
        )
        self.budget = max_tokens - SPECIAL_TOKENS_PER_CAPTION
        self.max_labels = max_labels
        self.related = related or {}
        self.words = {i: {w for name in self.synonyms[i] for w in name.split()} for i in label_map}
        self.hard_fraction = hard_fraction

    def _name(self, label: int, generator: torch.Generator) -> str:
        options = self.synonyms[label]
        if len(options) == 1:
            return options[0]
        return options[int(torch.randint(len(options), (), generator=generator))]

    def _fill(
        self, labels: list[int], limit: int, used: int, generator: torch.Generator
    ) -> tuple[list[tuple[int, str]], int]:
        """Adds ``labels`` in order while they fit; returns the added (label, name) and tokens."""
        chosen = []
        for label in labels:
            if len(chosen) >= limit:
                break
            name = self._name(label, generator)
            if used + self.token_counts[name] <= self.budget:
                chosen.append((label, name))
                used += self.token_counts[name]
        return chosen, used

    def _hard_groups(self, present: list[int], excluded: set[int]) -> list[list[int]]:
        """Related labels of each positive, one group per word of the positive's name that they
        share ("red" → the other red things, "seven" → the other sevens); related labels that
        share no word form one more group. Groups are in a fixed order (names, not sets)."""
        groups = []
        for p in present:
            words = list(dict.fromkeys(self.synonyms[p][0].split()))
            by_word: dict[str, list[int]] = {w: [] for w in words}
            rest: list[int] = []
            for x in self.related.get(p, ()):
                if x in excluded:
                    continue
                shared = [w for w in words if w in self.words[x]]
                (by_word[shared[0]] if shared else rest).append(x)
            groups += [g for g in [*by_word.values(), rest] if g]
        return groups

    def _negative_order(
        self, present: list[int], limit: int, generator: torch.Generator
    ) -> list[int]:
        """Negative candidates: up to ``hard_fraction · limit`` related labels, then all other
        labels in random order. Related labels are drawn round-robin from the groups of
        ``_hard_groups`` (each shuffled), so every confusion gets its share: drawn from their
        union, the larger same-colour group would crowd out the few same-object negatives."""
        excluded = set(present)
        groups = self._hard_groups(present, excluded)
        groups = [[g[i] for i in torch.randperm(len(g), generator=generator).tolist()]
                  for g in groups]  # fmt: skip
        hard: list[int] = []
        for rank in range(max((len(g) for g in groups), default=0)):
            for g in groups:
                if rank < len(g) and g[rank] not in hard:
                    hard.append(g[rank])
        hard = hard[: round(self.hard_fraction * limit)]
        excluded.update(hard)
        rest = [x for x in self.label_ids if x not in excluded]
        rest = [rest[i] for i in torch.randperm(len(rest), generator=generator).tolist()]
        return hard + rest

    def __call__(self, box_labels: torch.Tensor, generator: torch.Generator) -> SampledCaption:
        """box_labels (G,) int label-map ids of the image's boxes → a ``SampledCaption``."""
        present = sorted(set(box_labels.tolist()))
        unknown = [x for x in present if x not in self.synonyms]
        if unknown:
            raise KeyError(f"box labels {unknown} are not in the label map")
        order = torch.randperm(len(present), generator=generator).tolist()
        positives, used = self._fill([present[i] for i in order], len(present), 0, generator)
        limit = max(self.max_labels - len(positives), 0)
        negatives, _ = self._fill(
            self._negative_order(present, limit, generator), limit, used, generator
        )
        entries = positives + negatives
        entries = [entries[i] for i in torch.randperm(len(entries), generator=generator).tolist()]
        if not entries:
            raise ValueError(f"no category fits a {self.budget + 2}-token caption")
        label_ids = [label for label, _ in entries]
        caption, spans = build_caption([name for _, name in entries])
        index_of = {label: c for c, label in enumerate(label_ids)}
        keep = torch.tensor([x in index_of for x in box_labels.tolist()], dtype=torch.bool)
        cat_index = torch.tensor([index_of[x] for x in box_labels[keep].tolist()], dtype=torch.long)
        dropped = int((~keep).sum())
        if dropped:
            warnings.warn(
                f"caption budget of {self.budget + 2} tokens: dropped {dropped} boxes whose "
                "category did not fit",
                stacklevel=2,
            )
        names = [name for _, name in entries]
        return SampledCaption(caption, spans, names, label_ids, keep, cat_index, dropped)
