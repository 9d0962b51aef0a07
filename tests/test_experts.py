"""Mixture-of-experts models (Qwen3-MoE, OLMoE, Mixtral: experts fused as 3-D tensors): the same guarantees as dense
models (bit-exact restore, exact freezing, lossless mask files), dimensions and perturbations over every expert,
routers in scope by default."""

from __future__ import annotations

import pytest
import torch

from lm_eval_lingreg.anatomy import DEFAULT_SCOPE, WITHOUT_ROUTERS, in_scope, is_router, model_slots, named_parameters, scope_shapes
from lm_eval_lingreg.region_io import load_region, save_region
from lm_eval_lingreg.regions import Region, apply

from helpers import EXPERTS, MOE_FAMILIES, assert_unchanged, check_frozen_exact_and_rest_moved, make_tiny, random_region, snapshot

IDS = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29]])


@pytest.fixture(params=MOE_FAMILIES)
def moe(request) -> torch.nn.Module:
    return make_tiny(request.param)


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def test_routers_are_in_the_default_scope_and_one_pattern_leaves_them_out(moe):
    routers = [n for n in in_scope(moe, DEFAULT_SCOPE) if is_router(n)]
    assert routers == [n for n in named_parameters(moe) if n.endswith("mlp.gate.weight")] and len(routers) == 2
    assert not any(is_router(n) for n in in_scope(moe, WITHOUT_ROUTERS))
    assert set(in_scope(moe, DEFAULT_SCOPE)) - set(in_scope(moe, WITHOUT_ROUTERS)) == set(routers)


def test_ablation_of_expert_entries_changes_the_output_and_restores_bit_exactly(moe):
    before, base = snapshot(moe), _logits(moe)
    region = random_region(moe, 0.05, seed=1)
    assert any(len(region.shapes[n]) == 3 and idx.numel() for n, idx in region.indices.items())
    saved = apply(region, moe)
    for name in region.indices:
        assert bool((named_parameters(moe)[name].reshape(-1)[region.indices[name]] == 0).all())
    assert not torch.allclose(_logits(moe), base)
    saved.restore()
    assert_unchanged(moe, before)
    assert torch.equal(_logits(moe), base)


def test_frozen_expert_entries_are_unchanged_after_training(moe):
    from lm_eval_lingreg.freeze import FrozenRegion

    before = snapshot(moe)
    region = random_region(moe, 0.05, seed=2)
    moe.train()
    opt = torch.optim.AdamW([p for p in moe.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.01)
    frozen = FrozenRegion(moe, region).attach(opt)
    for _ in range(3):
        moe(input_ids=IDS, labels=IDS).loss.backward()
        opt.step()
        opt.zero_grad()
    assert frozen.verify()
    check_frozen_exact_and_rest_moved(moe, before, region)


@pytest.mark.parametrize("suffix", ["m.safetensors", "m.pt", "official"])
def test_masks_over_3d_expert_tensors_round_trip(moe, tmp_path, suffix):
    region = random_region(moe, 0.03, seed=3).with_metadata(model="tiny-moe")
    path = save_region(region, tmp_path / suffix, "official" if suffix == "official" else None)
    back = load_region(path)
    assert back.shapes == region.shapes and all(torch.equal(back.indices[n], region.indices[n]) for n in region.indices)
    assert any(len(s) == 3 for s in back.shapes.values())


def test_dimensions_count_every_experts_rows_and_columns(moe):
    from lm_eval_lingreg.dimensions import dimension_counts

    slots, hidden = model_slots(moe)
    shapes = scope_shapes(moe)
    down = "model.layers.1.mlp.experts.down_proj"
    gate_up = "model.layers.0.mlp.experts.gate_up_proj"
    region = Region.from_indices({down: slots[down].indices(7), gate_up: slots[gate_up].indices(3)}, shapes)
    counts = dimension_counts(region)
    assert counts.hidden == hidden and set(counts.ranked(2)) == {7, 3}
    assert counts.row(7)["write"] == EXPERTS * shapes[down][2] and counts.row(3)["read"] == EXPERTS * shapes[gate_up][1]
    assert counts.total[7] == slots[down].entries_per_dim and int(counts.total.sum()) == region.num_selected


def test_a_dimension_perturbation_reaches_every_expert_and_the_router_and_restores(moe):
    from lm_eval_lingreg.interventions import perturb
    from lm_eval_lingreg.perturbation import Perturbation

    before, base = snapshot(moe), _logits(moe)
    shapes = scope_shapes(moe)
    with perturb(moe, Perturbation.parse("layer=1:dim=5:op=mul:value=4")) as applied:
        changed = {n for n, p in named_parameters(moe).items() if not torch.equal(p, before[n])}
        assert {"model.layers.1.mlp.gate.weight", "model.layers.1.mlp.experts.gate_up_proj", "model.layers.1.mlp.experts.down_proj"} <= changed
        e, rows, inter = shapes["model.layers.1.mlp.experts.down_proj"]
        gate_up_rows = shapes["model.layers.1.mlp.experts.gate_up_proj"][1]
        attn = sum(shapes[f"model.layers.1.self_attn.{p}_proj.weight"][0] for p in "qkv") + shapes["model.layers.1.self_attn.o_proj.weight"][1]
        assert applied.entries_changed == 2 + attn + EXPERTS + e * gate_up_rows + e * inter  # norms, attention, router, experts
        assert not torch.allclose(_logits(moe), base)
    assert_unchanged(moe, before)


def test_hf_perturbed_and_region_ablated_load_a_moe_model(tmp_path):
    from lm_eval_lingreg.models import PerturbedLM, RegionAblatedLM

    from helpers import tiny_tokenizer

    model = make_tiny("qwen3_moe")
    model.save_pretrained(tmp_path / "m")
    tiny_tokenizer().save_pretrained(tmp_path / "m")
    lm = PerturbedLM(pretrained=str(tmp_path / "m"), layer=0, dim=4, op="zero", device="cpu", dtype="float32")
    assert lm._lingreg_info["entries_changed"] > EXPERTS * 2
    lm.perturbation.restore()
    assert_unchanged(lm.model, snapshot(model))
    mask = save_region(random_region(model, 0.05), tmp_path / "r.safetensors")
    lm = RegionAblatedLM(pretrained=str(tmp_path / "m"), mask=str(mask), device="cpu", dtype="float32")
    assert lm._lingreg_info["entries_changed"] == load_region(mask).num_selected
