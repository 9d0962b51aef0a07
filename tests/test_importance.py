"""Importance scoring: s_l = theta * sum of per-sample mean-loss gradients (tiny random models)."""

from __future__ import annotations

import pytest
import torch

from lm_eval_lingreg import importance as imp
from lm_eval_lingreg import lm_loss
from lm_eval_lingreg.anatomy import named_parameters, scope_shapes
from lm_eval_lingreg.corpora import make_samples
from lm_eval_lingreg.errors import RegionError, UsageError

from helpers import make_tiny


def test_gradient_sum_does_not_depend_on_batch_size(tiny_model, tok):
    samples = make_samples(tok, "ru", 12, seed=0).input_ids
    a = imp.sum_gradients(tiny_model, samples, batch_size=1)
    b = imp.sum_gradients(tiny_model, samples, batch_size=5)
    assert a.samples == b.samples == 12 and a.tokens == b.tokens
    for n in a.grads:
        torch.testing.assert_close(a.grads[n], b.grads[n], rtol=1e-4, atol=1e-6)


def test_importance_is_theta_times_summed_gradient_of_per_sample_mean_loss(tok):
    model = make_tiny("llama")
    samples = make_samples(tok, "es", 3, seed=1).input_ids
    got = imp.importance(model, imp.sum_gradients(model, samples, batch_size=2).grads)
    model.zero_grad()
    for s in samples:
        ids = torch.tensor([s])
        model(input_ids=ids, labels=ids).loss.backward()  # HF loss = mean over the sample's tokens
    params = named_parameters(model)
    for n, s in got.items():
        torch.testing.assert_close(s, params[n].detach() * params[n].grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_chunked_head_gives_the_same_gradients_as_a_full_forward(arch, tok, monkeypatch):
    model = make_tiny(arch)
    if arch == "gemma3":
        model.config.final_logit_softcapping = 3.0  # exercised on the chunked path too
    samples = make_samples(tok, "ko", 6, seed=2).input_ids
    chunked = imp.sum_gradients(model, samples, batch_size=3, max_logits_mb=7 * 320 * 4 / 2**20)
    monkeypatch.setattr(lm_loss, "split_head", lambda model: None)
    full = imp.sum_gradients(model, samples, batch_size=3)
    for n in full.grads:
        torch.testing.assert_close(chunked.grads[n], full.grads[n], rtol=1e-4, atol=1e-6)


def test_only_block_parameters_are_scored_and_the_model_is_left_as_it_was(tiny_model, tok):
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    flags = {n: p.requires_grad for n, p in tiny_model.named_parameters()}
    seen = []
    emb = tiny_model.get_input_embeddings().weight
    emb.register_hook(lambda g: seen.append(g))
    result = imp.sum_gradients(tiny_model, make_samples(tok, "zh", 4).input_ids)
    assert set(result.grads) == set(scope_shapes(tiny_model)) and not seen, "embedding gradient was computed"
    for n, p in tiny_model.named_parameters():
        assert torch.equal(p.detach(), before[n]) and p.requires_grad == flags[n] and p.grad is None


def test_fp32_accumulation_for_bf16_models(tok):
    model = make_tiny("gemma3").to(torch.bfloat16)
    result = imp.sum_gradients(model, make_samples(tok, "ar", 4).input_ids)
    assert all(g.dtype == torch.float32 for g in result.grads.values())
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


def test_bad_scope_and_batch_size_are_clear_errors(tiny_model, tok):
    samples = make_samples(tok, "ar", 2).input_ids
    with pytest.raises(RegionError, match="matches the scope"):
        imp.sum_gradients(tiny_model, samples, scope="^nothing$")
    with pytest.raises(UsageError, match="batch size"):
        imp.sum_gradients(tiny_model, samples, batch_size=0)
