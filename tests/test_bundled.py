"""The bundled model is converted once, atomically."""

from __future__ import annotations

import pytest

from lm_eval_lingreg import bundled
from lm_eval_lingreg.errors import BundledModelError


def test_interrupted_conversion_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    monkeypatch.setenv("LINGREG_CACHE", str(tmp_path))

    def crash(out):
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(bundled, "_convert", crash)
    with pytest.raises(KeyboardInterrupt):
        bundled.prepare()
    assert not bundled.model_dir().exists() and not bundled.is_prepared()
    assert [p.name for p in (tmp_path / "models").iterdir() if not p.name.endswith(".lingreg-lock")] == []


def test_prepare_converts_once_then_reuses(tmp_path, monkeypatch):
    monkeypatch.setenv("LINGREG_CACHE", str(tmp_path))
    calls = []

    def fake(out):
        calls.append(out)
        (out / "lingreg-bundled.json").write_text("{}")

    monkeypatch.setattr(bundled, "_convert", fake)
    first, second = bundled.prepare(), bundled.prepare()
    assert first == second == bundled.model_dir() and len(calls) == 1


def test_resolve_pretrained_maps_names_to_the_bundled_model(monkeypatch):
    monkeypatch.setattr(bundled, "prepare", lambda name=bundled.DEFAULT_MODEL: f"/cache/{name}")
    assert bundled.resolve_pretrained(None) == "/cache/gemma-3-270m"
    assert bundled.resolve_pretrained("gemma-3-270m") == "/cache/gemma-3-270m"
    assert bundled.resolve_pretrained("/my/model") == "/my/model"


def test_unknown_bundled_name_is_an_error():
    with pytest.raises(BundledModelError, match="gemma-3-270m"):
        bundled.prepare("llama-7b")


@pytest.mark.slow
def test_bundled_model_is_a_real_multilingual_model(bundled_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(bundled_model_dir)
    tok = AutoTokenizer.from_pretrained(bundled_model_dir)
    assert model.config.num_hidden_layers == 18 and model.config.hidden_size == 640
    ids = tok("Fudan University is located in", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert "Shanghai" in tok.decode(out[0])
    assert not hasattr(model.config, "quantization_config")
    assert next(model.parameters()).dtype == torch.float32
