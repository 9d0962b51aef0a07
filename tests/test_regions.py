"""Regions: the value object, its algebra, and applying it to a model (exactly the selected entries change,
bad regions change nothing, restore is exact)."""

from __future__ import annotations

import pytest
import torch

from lm_eval_lingreg.anatomy import named_parameters, scope_shapes
from lm_eval_lingreg.errors import RegionError, RegionMismatchError
from lm_eval_lingreg.regions import Region, apply, check_value, jaccard, restore, summarize, totals_by, validate
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


@pytest.mark.parametrize(("value", "message"), [(float("nan"), "finite"), (float("inf"), "finite"), (1e39, "overflows float32"), ("x", "not a number")])
def test_bad_mask_values_are_rejected_and_the_model_is_untouched(tiny_model, value, message):
    region = select_random(scope_shapes(tiny_model), 0.05, seed=0)
    before = _snapshot(tiny_model)
    with pytest.raises(RegionError, match=message):
        apply(region, tiny_model, value)
    assert all(torch.equal(v, before[n]) for n, v in tiny_model.state_dict().items())


def test_value_range_follows_the_target_dtype():
    w = torch.zeros(3, dtype=torch.float16)
    assert check_value(6e4, [w]) == 6e4
    with pytest.raises(RegionError, match="overflows float16"):
        check_value(7e4, [w])


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


def test_indices_are_kept_on_the_cpu_whatever_their_device(tiny_model):
    """Regions hold CPU indices (tests/test_gpu.py builds them from CUDA tensors)."""
    shapes = scope_shapes(tiny_model)
    name = "model.layers.0.mlp.up_proj.weight"
    masks = {name: torch.zeros(shapes[name], dtype=torch.bool)}
    masks[name][1, 2] = True
    region = Region.from_masks(masks)
    assert region.indices[name].device.type == "cpu" and region.indices[name].tolist() == [1 * shapes[name][1] + 2]
    region = Region.from_indices({name: torch.tensor([5, 3, 5])}, shapes)
    assert region.indices[name].device.type == "cpu" and region.indices[name].tolist() == [3, 5]


def test_algebra_matches_boolean_logic(tiny_model):
    shapes = scope_shapes(tiny_model)
    a, b = select_random(shapes, 0.3, seed=1), select_random(shapes, 0.3, seed=2)
    for name in shapes:
        ma, mb = a.mask(name), b.mask(name)
        assert torch.equal((a | b).mask(name), ma | mb)
        assert torch.equal((a & b).mask(name), ma & mb)
        assert torch.equal((a - b).mask(name), ma & ~mb)
        assert torch.equal((~a).mask(name), ~ma)
    assert (a | b).num_selected + (a & b).num_selected == a.num_selected + b.num_selected


def test_regions_of_different_models_do_not_combine_or_compare():
    a = Region.from_indices({"model.layers.0.w.weight": [1]}, {"model.layers.0.w.weight": (4, 4)})
    b = Region.from_indices({"model.layers.0.w.weight": [1]}, {"model.layers.0.w.weight": (8, 2)})
    with pytest.raises(RegionMismatchError, match="differ in shape"):
        a | b
    with pytest.raises(RegionMismatchError, match="differ in shape"):
        jaccard(a, b)


@pytest.mark.parametrize("name", ["../ESCAPED", "/abs/X", "a/b.weight", "model..weight", "", ".hidden", "x\\y", "nul\x00"])
def test_names_that_could_become_paths_are_refused(name):
    with pytest.raises(RegionError, match="invalid parameter name"):
        Region.from_indices({name: [0]}, {name: (2,)})


@pytest.mark.parametrize("shape", [[-1, 2], [1.5], "12", [10**12, 10**3], [True]])
def test_bad_declared_shapes_are_refused(shape):
    with pytest.raises(RegionError, match="shape"):
        Region({}, {"model.layers.0.w.weight": shape})


def test_digest_depends_on_the_selection_not_the_metadata(tiny_model):
    a = select_random(scope_shapes(tiny_model), 0.1, seed=1)
    assert a.digest() == a.with_metadata(note="x").digest() != select_random(scope_shapes(tiny_model), 0.1, seed=2).digest()


def test_summaries_per_layer_and_module(tiny_model):
    region = select_random(scope_shapes(tiny_model), 0.1, seed=0)
    rows = summarize(region)
    assert sum(r["selected"] for r in rows) == region.num_selected
    assert {r["layer"] for r in rows} == {0, 1} and any(r["module"] == "mlp.down_proj" for r in rows)
    by_layer = totals_by(rows, "layer")
    assert list(by_layer) == [0, 1] and sum(s for s, _ in by_layer.values()) == region.num_selected


def test_errors_about_a_loaded_region_name_its_file(tmp_path):
    """A region read from a file carries its name into later errors: a model it does not fit, a region it cannot be compared with."""
    from lm_eval_lingreg.region_io import load_region, save_region

    small, big = make_tiny("llama"), make_tiny("gemma3")
    a = save_region(select_random(scope_shapes(big), 0.1, seed=0), tmp_path / "a.safetensors")
    name = next(iter(scope_shapes(small)))
    b = save_region(Region({name: torch.tensor([0])}, {name: (3, 3)}), tmp_path / "b.pt")
    with pytest.raises(RegionMismatchError, match=r"region .*a\.safetensors does not fit model"):
        validate(load_region(a), small)  # gemma's extra norms are not in llama
    with pytest.raises(RegionMismatchError, match=r"cannot take the intersection of .*a\.safetensors and .*b\.pt"):
        load_region(a).intersection(load_region(b))
