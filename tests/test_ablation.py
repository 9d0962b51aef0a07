"""Applying a region to a model: exactly the selected entries change, bad regions change nothing."""

from __future__ import annotations

import pytest
import torch

from lm_eval_lingreg.regions import Region, RegionError, RegionMismatchError, apply, named_parameters, restore, scope_shapes
from lm_eval_lingreg.selection import select_random

from helpers import make_tiny


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.state_dict().items()}


def test_ablation_touches_exactly_the_selected_entries(tiny_model):
    before = _snapshot(tiny_model)
    region = select_random(scope_shapes(tiny_model), 0.1, seed=0)
    apply(region, tiny_model, 0.0)
    after = tiny_model.state_dict()
    for name, old in before.items():
        changed = (after[name] != old).reshape(-1)
        if name in region.indices:
            mask = region.mask(name).reshape(-1)
            assert not changed[~mask].any(), f"{name}: unselected entries changed"
            assert (after[name].reshape(-1)[mask] == 0).all()
        else:
            assert not changed.any(), f"{name} is outside the region but changed"


def test_scope_covers_blocks_but_not_embeddings_or_final_norm(tiny_model):
    names = set(scope_shapes(tiny_model))
    assert all(".layers." in n for n in names)
    assert "model.layers.0.mlp.down_proj.weight" in names and "model.layers.1.input_layernorm.weight" in names
    assert not any("embed" in n or n == "model.norm.weight" or "lm_head" in n for n in names)


def test_mask_value_is_written(tiny_model):
    region = select_random(scope_shapes(tiny_model), 0.05, seed=1)
    apply(region, tiny_model, 3.5)
    params = named_parameters(tiny_model)
    for name, idx in region.indices.items():
        assert (params[name].detach().reshape(-1)[idx] == 3.5).all()


def test_restore_puts_back_the_exact_weights(tiny_model):
    before = _snapshot(tiny_model)
    region = select_random(scope_shapes(tiny_model), 0.2, seed=2)
    saved = apply(region, tiny_model, 0.0)
    restore(region, tiny_model, saved)
    for name, value in tiny_model.state_dict().items():
        assert torch.equal(value, before[name]), name


def _region_with(model, **edits) -> Region:
    region = select_random(scope_shapes(model), 0.05, seed=0)
    indices, shapes = dict(region.indices), dict(region.shapes)
    for name, shape in edits.items():
        shapes[name] = shape
        indices[name] = torch.tensor([0], dtype=torch.int64)
    return Region(indices, shapes, {"model": "some-other-model"})


def test_unknown_names_are_listed_and_model_untouched():
    model = make_tiny("llama")
    before = _snapshot(model)
    region = _region_with(model, **{f"model.layers.{i}.mlp.w9.weight": (4, 4) for i in range(7)})
    with pytest.raises(RegionMismatchError) as err:
        apply(region, model)
    msg = str(err.value)
    assert "7 parameter name(s) not in the model" in msg and "model.layers.0.mlp.w9.weight" in msg
    assert "(7 in all)" in msg and "some-other-model" in msg
    assert all(torch.equal(v, before[n]) for n, v in model.state_dict().items())


def test_wrong_shapes_are_listed_and_model_untouched():
    model = make_tiny("gemma3")
    before = _snapshot(model)
    region = _region_with(model, **{"model.layers.0.mlp.down_proj.weight": (64, 32)})
    with pytest.raises(RegionMismatchError, match=r"shape mismatch.*down_proj.*mask \(64, 32\), model \(32, 64\)"):
        apply(region, model)
    assert all(torch.equal(v, before[n]) for n, v in model.state_dict().items())


def test_non_finite_mask_value_is_rejected(tiny_model):
    region = select_random(scope_shapes(tiny_model), 0.05, seed=0)
    with pytest.raises(RegionError, match="finite"):
        apply(region, tiny_model, float("nan"))


def test_ratio_outside_unit_interval_is_rejected(tiny_model):
    with pytest.raises(RegionError, match="ratio"):
        select_random(scope_shapes(tiny_model), 1.5)


def test_random_selection_is_per_tensor_and_seeded(tiny_model):
    shapes = scope_shapes(tiny_model)
    a, b = select_random(shapes, 0.01, seed=7), select_random(shapes, 0.01, seed=7)
    assert a == b
    for name, shape in shapes.items():
        assert a.indices[name].numel() == int(0.01 * torch.Size(shape).numel())


def test_peft_adapter_plus_mask_ablates_base_weights_only():
    peft = pytest.importorskip("peft")
    model = make_tiny("llama")
    base_q = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora_before = {n: p.detach().clone() for n, p in lora.named_parameters() if "lora_" in n}
    region = select_random(scope_shapes(lora), 0.2, seed=0)
    assert "model.layers.0.self_attn.q_proj.weight" in region.indices  # plain names, not base_layer
    apply(region, lora, 0.0)
    q = lora.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight.detach()
    mask = region.mask("model.layers.0.self_attn.q_proj.weight")
    assert (q[mask] == 0).all() and torch.equal(q[~mask], base_q[~mask])
    for n, p in lora.named_parameters():
        if "lora_" in n:
            assert torch.equal(p.detach(), lora_before[n]), f"adapter weight {n} changed"
