"""Anatomy: plain parameter names (peft unwrapped), the scope, residual-stream slots, norm gains, fingerprints."""

from __future__ import annotations

import pytest
import torch

from lm_eval_lingreg.anatomy import (
    compile_scope,
    gain_offset,
    hidden_size,
    in_scope,
    layer_index,
    layer_module,
    model_fingerprint,
    model_slots,
    named_parameters,
    scope_shapes,
    split_head,
)
from lm_eval_lingreg.errors import RegionError

from helpers import make_tiny


def test_scope_covers_blocks_but_not_embeddings_or_final_norm(tiny_model):
    names = set(scope_shapes(tiny_model))
    assert all(".layers." in n for n in names)
    assert "model.layers.0.mlp.down_proj.weight" in names and "model.layers.1.input_layernorm.weight" in names
    assert not any("embed" in n or n == "model.norm.weight" or "lm_head" in n for n in names)


def test_layer_names_are_read_one_way_everywhere(tiny_model):
    assert layer_index("model.layers.3") == 3 and layer_index("layers.12") == 12
    assert layer_index("model.layers.3.mlp", ".mlp") == 3 and layer_index("model.layers.3.mlp") is None
    assert layer_index("model.layers.0.mlp.down_proj.weight", ".mlp.down_proj.weight") == 0
    assert layer_index("model.layers.0.mlp.down_proj.weight.x", ".mlp.down_proj.weight") is None  # the suffix ends the name
    assert layer_index("model.layers.0.mlpXdown_proj", ".mlp.down_proj") is None  # the suffix is literal, not a pattern
    assert layer_index("model.sublayers.3") is None and layer_index("model.layers.x") is None  # `layers` starts a name part
    assert layer_module("model.layers.1.mlp.down_proj.weight") == (1, "mlp.down_proj")
    assert layer_module("model.layers.1.self_attn.o_proj.bias") == (1, "self_attn.o_proj")
    assert layer_module("layers.2.input_layernorm") == (2, "input_layernorm")
    assert layer_module("model.embed_tokens.weight") == (None, "model.embed_tokens.weight")
    downs = {n: layer_index(n, ".mlp.down_proj.weight") for n in scope_shapes(tiny_model)}
    assert sorted(i for i in downs.values() if i is not None) == list(range(tiny_model.config.num_hidden_layers))


def test_bad_or_empty_scope_is_one_clear_error(tiny_model):
    with pytest.raises(RegionError, match="not a valid regular expression"):
        compile_scope("(")
    with pytest.raises(RegionError, match="no parameter of this model matches the scope 'nothing_here'.*model.embed_tokens"):
        in_scope(tiny_model, "nothing_here")


def test_peft_names_are_the_base_model_names():
    peft = pytest.importorskip("peft")
    model = make_tiny("llama")
    plain = set(named_parameters(model))
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["q_proj"]))
    assert set(named_parameters(wrapped)) == plain


def test_residual_slots_and_hidden_size(tiny_model):
    slots, hidden = model_slots(tiny_model)
    assert hidden == hidden_size(tiny_model) == 32
    roles = {(s.module, s.role) for s in slots.values() if s.layer == 0}
    assert {("q_proj", "read"), ("down_proj", "write"), ("input_layernorm", "norm")} <= roles
    assert not any(s.module in ("q_norm", "k_norm") for s in slots.values())
    down = slots["model.layers.0.mlp.down_proj.weight"]
    assert down.indices(3).tolist() == list(range(3 * 64, 4 * 64))  # row 3 of a 32 x 64 matrix
    q = slots["model.layers.0.self_attn.q_proj.weight"]
    assert q.indices(3).tolist() == [r * 32 + 3 for r in range(32)]  # column 3


@pytest.mark.parametrize(("arch", "offset"), [("gemma3", 1.0), ("llama", 0.0)])
def test_norm_gain_offset_is_probed_from_what_the_module_computes(arch, offset):
    model = make_tiny(arch)
    name = "model.layers.0.input_layernorm.weight"
    assert gain_offset(model.get_submodule(name.removesuffix(".weight")), named_parameters(model)[name]) == offset


def test_head_split_is_found_with_the_softcap():
    gemma = make_tiny("gemma3")
    gemma.config.final_logit_softcapping = 3.0
    head = split_head(gemma)
    assert head is not None and head.softcap == 3.0 and head.vocab_size == 320


def test_fingerprint_tells_models_apart_and_is_stable():
    a, b = make_tiny("llama", seed=0), make_tiny("llama", seed=1)
    assert model_fingerprint(a) == model_fingerprint(make_tiny("llama", seed=0)) != model_fingerprint(b)
    with torch.no_grad():
        named_parameters(a)["model.layers.0.mlp.up_proj.weight"].add_(1e-3)
    assert model_fingerprint(a) != model_fingerprint(make_tiny("llama", seed=0))


def test_fingerprint_sees_every_entry_and_the_config_but_not_the_path():
    base = model_fingerprint(make_tiny("llama", seed=0))
    for index in (1, 1025, 2047):  # entries an evenly spaced sample would skip
        m = make_tiny("llama", seed=0)
        with torch.no_grad():
            named_parameters(m)["model.layers.0.mlp.down_proj.weight"].view(-1)[index] += 1e-6
        assert model_fingerprint(m) != base, index
    m = make_tiny("llama", seed=0)
    m.config.rms_norm_eps = 0.5
    assert model_fingerprint(m) != base
    m = make_tiny("llama", seed=0)
    m.config._name_or_path = "/somewhere/else"
    assert model_fingerprint(m) == base
