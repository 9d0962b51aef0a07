"""The real bundled model (Gemma-3-270M) and its shipped masks; the findings themselves are tested in test_experiments.py."""

from __future__ import annotations

import pytest
import torch

from lm_eval_lingreg.region_io import shipped_masks

pytestmark = pytest.mark.slow


def test_shipped_masks_cover_the_issue_list():
    names = set(shipped_masks())
    for pct in (1, 3, 5):
        assert {f"core-top-{pct}", f"core-bottom-{pct}", f"core-random-{pct}"} <= names
    assert {f"mono-{iso}-1" for iso in ("ar", "es", "ru", "zh", "ko", "vi")} <= names and "core" in names


def test_scores_on_the_real_model_are_bit_identical_across_runs(bundled_model_dir):
    from lm_eval_lingreg.loading import load_model

    model, tok = load_model(str(bundled_model_dir), device="cpu")
    from lm_eval_lingreg.corpora import make_samples
    from lm_eval_lingreg.importance import importance, sum_gradients

    ids = make_samples(tok, "vi", 3, seed=5).input_ids
    a = importance(model, sum_gradients(model, ids, batch_size=2, pad_id=tok.pad_token_id).grads)
    b = importance(model, sum_gradients(model, ids, batch_size=2, pad_id=tok.pad_token_id).grads)
    assert all(torch.equal(a[n], b[n]) for n in a)
