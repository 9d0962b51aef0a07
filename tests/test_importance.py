"""Importance scoring, score files, selection and region inspection (tiny random models)."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from helpers import bin_path, make_tiny, run, tiny_tokenizer

from lm_eval_lingreg import importance as imp
from lm_eval_lingreg.corpora import CorpusError, make_samples
from lm_eval_lingreg.region_io import load_region
from lm_eval_lingreg.regions import jaccard, named_parameters, scope_shapes, summarize
from lm_eval_lingreg.scores import ScoreFileError, ScoreSet, read_header
from lm_eval_lingreg.selection import select_core, select_monolingual


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


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
    chunked = imp.sum_gradients(model, samples, batch_size=3, chunk=7)
    monkeypatch.setattr(imp, "_split_head", lambda model: None)
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


def _score(model, tok, out, langs=("ar", "zh", "ko"), **kw):
    return imp.score_languages(model, tok, list(langs), str(out), samples=6, seed=0, batch_size=3, model_name="tiny", log=lambda m: None, **kw)


def test_scores_are_bit_identical_for_the_same_seed_and_data(tok, tmp_path):
    model = make_tiny("gemma3")
    _score(model, tok, tmp_path / "a", langs=("vi",))
    _score(model, tok, tmp_path / "b", langs=("vi",))
    a, b = ScoreSet(tmp_path / "a"), ScoreSet(tmp_path / "b")
    assert all(torch.equal(a.get("vi", n), b.get("vi", n)) for n in a)


def test_interrupted_scoring_resumes_without_recomputing(tok, tmp_path, monkeypatch):
    model = make_tiny("llama")
    calls = []
    real = imp.sum_gradients

    def flaky(model, samples, **kw):
        calls.append(len(samples))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(model, samples, **kw)

    monkeypatch.setattr(imp, "sum_gradients", flaky)
    with pytest.raises(KeyboardInterrupt):
        _score(model, tok, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ar.safetensors"]  # nothing half-written
    summary = _score(model, tok, tmp_path)
    assert summary["ar"] == {"skipped": True} and len(calls) == 4
    header = read_header(tmp_path / "zh.safetensors")
    assert header["info"]["samples"] == 6 and header["info"]["tokens"] > 0 and header["config"]["seed"] == 0


def test_changed_configuration_is_rescored(tok, tmp_path):
    model = make_tiny("llama")
    _score(model, tok, tmp_path, langs=("ar",))
    summary = imp.score_languages(model, tok, ["ar"], str(tmp_path), samples=5, seed=0, model_name="tiny", log=lambda m: None)
    assert summary["ar"]["samples"] == 5


def test_core_selection_follows_the_definition():
    scores = {
        "ar": {"w": torch.tensor([[5.0, -1.0], [0.0, 2.0]]), "v": torch.tensor([1.0, 2.0, 3.0, 4.0])},
        "zh": {"w": torch.tensor([[-1.0, 3.0], [0.5, 0.0]]), "v": torch.tensor([-4.0, 0.0, 0.0, 0.0])},
    }
    get = lambda lang, name: scores[lang][name]  # noqa: E731
    top = select_core(get, ["w", "v"], ["ar", "zh"], 0.5, "top")
    # S(w) = [[6, 4], [0.5, 2]] -> top 2 = {0, 1};  S(v) = [5, 2, 3, 4] -> {0, 3}
    assert top.indices["w"].tolist() == [0, 1] and top.indices["v"].tolist() == [0, 3]
    bottom = select_core(get, ["w", "v"], ["ar", "zh"], 0.5, "bottom")
    assert bottom.indices["w"].tolist() == [2, 3] and bottom.indices["v"].tolist() == [1, 2]
    rnd = select_core(get, ["w", "v"], ["ar", "zh"], 0.5, "random", seed=1)
    assert [i.numel() for i in rnd.indices.values()] == [2, 2] and rnd == select_core(get, ["w", "v"], ["ar", "zh"], 0.5, "random", seed=1)
    assert top.metadata["kind"] == "core-top" and top.metadata["languages"] == ["ar", "zh"]


def test_monolingual_region_excludes_other_languages_top_k():
    scores = {
        "ar": {"v": torch.tensor([9.0, 8.0, 7.0, 0.0, 0.0, 0.0])},
        "zh": {"v": torch.tensor([9.0, 0.0, 0.0, 8.0, 7.0, 0.0])},
        "ko": {"v": torch.tensor([0.0, 8.0, 0.0, 7.0, 0.0, 9.0])},
    }
    get = lambda lang, name: scores[lang][name]  # noqa: E731
    ar = select_monolingual(get, ["v"], "ar", ["ar", "zh", "ko"], 0.5)
    assert ar.indices["v"].tolist() == [2]  # ar top3 {0,1,2} minus zh top3 {0,3,4} minus ko top3 {1,3,5}
    with pytest.raises(ValueError, match="at least one other"):
        select_monolingual(get, ["v"], "ar", ["ar"], 0.5)


def test_cli_score_extract_info_compare(tiny_model_dir, tmp_path):
    scores = tmp_path / "scores"
    proc = run([bin_path("lingreg"), "score", "--pretrained", str(tiny_model_dir), "--langs", "ar,es,ru", "--samples", "4", "--out", str(scores)])
    assert proc.returncode == 0 and proc.stdout.strip().splitlines()[-1] == str(scores.resolve())
    assert "tokens" in proc.stdout
    for which in ("top", "bottom", "random"):
        proc = run([bin_path("lingreg"), "extract", "core", "--scores", str(scores), "--langs", "ar,es,ru", "--ratio", "0.05", "--which", which, "--out", str(tmp_path / f"{which}.safetensors")])
        assert proc.returncode == 0
    proc = run([bin_path("lingreg"), "extract", "monolingual", "--scores", str(scores), "--langs", "ar,es,ru", "--lang", "ar", "--out", str(tmp_path / "mono.safetensors")])
    assert proc.returncode == 0
    top = load_region(tmp_path / "top.safetensors")
    assert top.metadata["kind"] == "core-top" and top.metadata["languages"] == ["ar", "es", "ru"]
    assert top.metadata["samples"] == {"ar": 4, "es": 4, "ru": 4} and len(top.metadata["scores_sha256"]) == 64
    assert abs(top.density - 0.05) < 0.01
    mono = load_region(tmp_path / "mono.safetensors")
    assert jaccard(mono, top)[0] < 1 and mono.num_selected <= top.num_selected
    proc = run([bin_path("lingreg"), "mask", "info", str(tmp_path / "top.safetensors")])
    assert proc.returncode == 0 and "down_proj" in proc.stdout and "layer" in proc.stdout
    proc = run([bin_path("lingreg"), "mask", "compare", str(tmp_path / "top.safetensors"), str(tmp_path / "top.safetensors"), "--json"])
    assert json.loads(proc.stdout)["jaccard"] == 1.0
    proc = run([bin_path("lingreg"), "extract", "core", "--scores", str(scores), "--out", str(tmp_path / "x.safetensors")])
    assert proc.returncode == 2 and "no scores for ['zh', 'ko', 'vi']" in proc.stderr


def test_distributed_scoring_matches_single_process(tiny_model_dir, tmp_path):
    args = ["score", "--pretrained", str(tiny_model_dir), "--langs", "zh,ar", "--samples", "7", "--batch-size", "2"]
    single = run([bin_path("lingreg"), *args, "--out", str(tmp_path / "one")])
    assert single.returncode == 0
    multi = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "lm_eval_lingreg.cli", *args, "--out", str(tmp_path / "two")])
    assert multi.returncode == 0
    one, two = ScoreSet(tmp_path / "one"), ScoreSet(tmp_path / "two")
    for lang in ("zh", "ar"):
        assert two.headers[lang]["info"]["world_size"] == 2
        assert two.headers[lang]["info"]["tokens"] == one.headers[lang]["info"]["tokens"]
        for n in one:
            torch.testing.assert_close(two.get(lang, n), one.get(lang, n), rtol=1e-4, atol=1e-7)


def test_corpus_errors_name_the_fix(tok, tmp_path):
    with pytest.raises(CorpusError, match="no Swahili"):
        make_samples(tok, "sw", 5)
    with pytest.raises(CorpusError, match="only 1000 sentences"):
        make_samples(tok, "en", 5000)
    with pytest.raises(CorpusError, match="blocks"):
        make_samples(tok, "en", 10**5, unit="blocks", seq_len=512)
    with pytest.raises(CorpusError, match="not found"):
        make_samples(tok, "en", 5, data=str(tmp_path / "nope"))


def test_user_files_and_packed_blocks(tok, tmp_path):
    (tmp_path / "sw.txt").write_text("Habari ya asubuhi rafiki yangu.\n\nNinapenda kusoma vitabu.\n" * 30, encoding="utf-8")
    (tmp_path / "id.jsonl").write_text("\n".join(json.dumps({"text": f"Saya suka membaca buku nomor {i}."}) for i in range(40)), encoding="utf-8")
    s = make_samples(tok, "sw", 10, data=str(tmp_path))
    assert len(s.input_ids) == 10 and s.source.endswith("sw.txt")
    blocks = make_samples(tok, "id", 4, data=str(tmp_path), unit="blocks", seq_len=32)
    assert [len(b) for b in blocks.input_ids] == [32] * 4 and all(b[0] == tok.bos_token_id for b in blocks.input_ids)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "id.jsonl").write_text('{"txt": "x"}\n')
    with pytest.raises(CorpusError, match="'text' field"):
        make_samples(tok, "id", 1, data=str(tmp_path / "bad"))


def test_summarize_counts_per_layer_and_module(tiny_model):
    from lm_eval_lingreg.selection import select_random

    region = select_random(scope_shapes(tiny_model), 0.1, seed=0)
    rows = summarize(region)
    assert sum(r["selected"] for r in rows) == region.num_selected
    assert {r["layer"] for r in rows} == {0, 1} and any(r["module"] == "mlp.down_proj" for r in rows)


def test_score_set_rejects_mixed_models(tok, tmp_path):
    _score(make_tiny("llama"), tok, tmp_path, langs=("ar",))
    imp.score_languages(make_tiny("gemma3"), tok, ["zh"], str(tmp_path), samples=6, model_name="other", log=lambda m: None)
    with pytest.raises(ScoreFileError):
        ScoreSet(tmp_path, ["ar", "zh"])
