"""Shared fixtures: tiny random Llama / Gemma-3 models built from configs, and the real bundled model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from helpers import make_tiny, tiny_tokenizer  # noqa: E402


@pytest.fixture(params=["llama", "gemma3"])
def tiny_model(request) -> torch.nn.Module:
    return make_tiny(request.param)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny Llama saved as a normal HF directory (with tokenizer): fast for lm-eval runs."""
    out = tmp_path_factory.mktemp("tiny-llama")
    make_tiny("llama").save_pretrained(out)
    tiny_tokenizer().save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def bundled_model_dir() -> Path:
    """The real bundled Gemma-3-270M (converted once, then cached)."""
    from lm_eval_lingreg.bundled import prepare

    return prepare()
