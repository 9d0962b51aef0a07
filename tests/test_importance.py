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


def _hf_loss_gradients(model, batches, pad_id=0):
    """Sum over micro-batches of the gradient of the Hugging Face causal-LM loss (mean over the batch's tokens)."""
    params = named_parameters(model)
    model.zero_grad()
    for batch in batches:
        ids, attn = lm_loss.pad_batch(batch, pad_id)
        labels = ids.masked_fill(attn == 0, -100)
        model(input_ids=ids, attention_mask=attn, labels=labels).loss.backward()
    return {n: p.grad.clone() for n, p in params.items() if p.grad is not None}


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_batch_token_normalisation_is_the_hugging_face_loss_of_each_micro_batch(arch, tok):
    model = make_tiny(arch)
    samples = make_samples(tok, "ru", 7, seed=3, unit="documents").input_ids
    assert len({len(s) for s in samples}) > 1, "the check needs samples of different lengths"
    got = imp.sum_gradients(model, samples, batch_size=3, loss_norm="batch-token")
    want = _hf_loss_gradients(model, [samples[0:3], samples[3:6], samples[6:7]])
    for n, g in got.grads.items():
        torch.testing.assert_close(g, want[n], rtol=1e-4, atol=1e-6)
    per_sample = imp.sum_gradients(model, samples, batch_size=3)  # differs for variable lengths
    assert any(not torch.allclose(per_sample.grads[n], g, rtol=1e-2) for n, g in got.grads.items())


def test_batch_token_sums_are_the_same_when_micro_batches_are_sharded_over_ranks(tok):
    from lm_eval_lingreg.corpora import shard_batches

    model = make_tiny("llama")
    samples = make_samples(tok, "es", 11, seed=4).input_ids
    whole = imp.sum_gradients(model, samples, batch_size=2, loss_norm="batch-token")
    parts = [imp.sum_gradients(model, shard_batches(samples, 2, r, 3), batch_size=2, loss_norm="batch-token") for r in range(3)]
    assert sum(p.samples for p in parts) == whole.samples and sum(p.tokens for p in parts) == whole.tokens
    for n, g in whole.grads.items():
        torch.testing.assert_close(sum(p.grads[n] for p in parts), g, rtol=1e-4, atol=1e-6)


def test_bfloat16_accumulation_stays_within_its_rounding_bound(tok):
    model = make_tiny("gemma3")
    samples = make_samples(tok, "zh", 16, seed=5).input_ids
    bf = imp.sum_gradients(model, samples, batch_size=2, grad_dtype="bfloat16")
    fp = imp.sum_gradients(model, samples, batch_size=2)
    assert all(g.dtype == torch.bfloat16 for g in bf.grads.values())
    # each of the n additions rounds the running sum to 8 significant bits: |error| <= n * 2^-8 * sum of |contributions|
    batches = list(imp.micro_batches(samples, 2, "sample"))
    magnitude = {n: torch.zeros_like(g) for n, g in fp.grads.items()}
    for b in batches:
        for n, g in imp.sum_gradients(model, b, batch_size=2).grads.items():
            magnitude[n] += g.abs()
    exceeded, differs = 0, 0
    for n, g in fp.grads.items():
        err = (bf.grads[n].float() - g).abs()
        exceeded += int((err > (len(batches) + 1) * 2**-8 * magnitude[n] + 1e-12).sum())
        differs += int((err > 0).sum())
    assert exceeded == 0 and differs > 0
    scores = imp.importance(model, bf.grads)
    assert all(s.dtype == torch.bfloat16 for s in scores.values())


def test_a_continued_sum_equals_one_sum_over_all_samples(tok):
    model = make_tiny("llama")
    samples = make_samples(tok, "ar", 9, seed=6).input_ids
    first = imp.sum_gradients(model, samples[:4], batch_size=2)
    both = imp.sum_gradients(model, samples[4:], batch_size=2, start=first)
    whole = imp.sum_gradients(model, samples, batch_size=2)
    assert both.samples == 9 and both.tokens == whole.tokens
    for n, g in whole.grads.items():
        torch.testing.assert_close(both.grads[n], g, rtol=1e-4, atol=1e-6)
    with pytest.raises(UsageError, match="another dtype"):
        imp.sum_gradients(model, samples[:2], start=both, grad_dtype="bfloat16")


def test_unknown_loss_norm_and_grad_dtype_are_clear_errors(tiny_model, tok):
    samples = make_samples(tok, "ar", 2).input_ids
    with pytest.raises(UsageError, match="loss normalisation 'token'.*sample, batch-token"):
        imp.sum_gradients(tiny_model, samples, loss_norm="token")
    with pytest.raises(UsageError, match="gradient dtype 'fp8'"):
        imp.sum_gradients(tiny_model, samples, grad_dtype="fp8")


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_activation_checkpointing_recomputes_the_layers_and_leaves_the_gradients_unchanged(arch, tok, monkeypatch):
    import transformers.modeling_utils as modeling_utils

    calls = []
    real = modeling_utils.checkpoint
    monkeypatch.setattr(modeling_utils, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = make_tiny(arch)
    samples = make_samples(tok, "zh", 6).input_ids
    plain = imp.sum_gradients(model, samples, batch_size=3)
    assert not calls
    modes, hooks = [m.training for m in model.modules()], [len(m._forward_hooks) for m in model.modules()]
    checkpointed = imp.sum_gradients(model, samples, batch_size=3, activation_checkpointing=True)
    assert len(calls) == 2 * 2  # each of the 2 layers, in each of the 2 micro-batches
    for n, g in plain.grads.items():
        assert float((checkpointed.grads[n].double() - g.double()).norm() / g.double().norm()) <= 1e-6, n
    assert not any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    assert [m.training for m in model.modules()] == modes and [len(m._forward_hooks) for m in model.modules()] == hooks
