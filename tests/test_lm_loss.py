"""Chunked head and loss: the same numbers and gradients as a full forward, at bounded memory."""

from __future__ import annotations

import pytest
import torch

from lm_eval_lingreg import lm_loss
from lm_eval_lingreg.errors import UsageError

from helpers import make_tiny


def _batch():
    ids, attn = lm_loss.pad_batch([[1, 5, 9, 13, 2], [1, 7, 3], [1, 40, 41, 42, 43, 44, 45]], pad_id=0)
    return ids, attn, lm_loss.next_token_labels(ids, attn)


def test_labels_skip_padding_and_the_last_position():
    ids, attn, labels = _batch()
    assert labels[1].tolist() == [7, 3, -100, -100, -100, -100, -100]
    assert labels[0, :4].tolist() == [5, 9, 13, 2] and labels[0, 4] == -100


def test_chunk_follows_the_memory_budget():
    assert lm_loss.chunk_rows(262144, 64) == 64 and lm_loss.chunk_rows(32000, 64) == 524 and lm_loss.chunk_rows(10**9, 1) == 1
    with pytest.raises(UsageError, match="positive"):
        lm_loss.chunk_rows(100, 0)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_chunked_nll_equals_the_full_logits(arch, monkeypatch):
    model = make_tiny(arch)
    if arch == "gemma3":
        model.config.final_logit_softcapping = 3.0
    ids, attn, labels = _batch()
    chunked = lm_loss.token_nll(model, ids, attn, labels, max_logits_mb=3 * 320 * 4 / 2**20)  # 3 positions per chunk
    monkeypatch.setattr(lm_loss, "split_head", lambda m: None)
    full = lm_loss.token_nll(model, ids, attn, labels)
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-6)
    assert (chunked[labels == -100] == 0).all()


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_chunked_backward_gives_the_gradients_of_the_full_loss(arch, monkeypatch):
    ids, attn, labels = _batch()
    weights = torch.rand(ids.shape)
    grads = []
    for split in (True, False):
        model = make_tiny(arch)
        if arch == "gemma3":
            model.config.final_logit_softcapping = 3.0
        if not split:
            monkeypatch.setattr(lm_loss, "split_head", lambda m: None)
        total = lm_loss.backward_weighted_nll(model, ids, attn, labels, weights, max_logits_mb=2 * 320 * 4 / 2**20)
        grads.append(({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, float(total)))
    (a, ta), (b, tb) = grads
    assert ta == pytest.approx(tb, rel=1e-5) and set(a) == set(b)
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=1e-4, atol=1e-6)
