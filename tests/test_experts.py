"""Mixture-of-experts models (Qwen3-MoE, OLMoE, Mixtral: experts fused as 3-D tensors): the same guarantees as dense
models (bit-exact restore, exact freezing, lossless mask files), dimensions and perturbations over every expert,
routers in scope by default."""

from __future__ import annotations

import pytest
import torch

from lm_eval_lingreg.anatomy import DEFAULT_SCOPE, WITHOUT_ROUTERS, in_scope, is_router, model_slots, named_parameters, scope_shapes
from lm_eval_lingreg.region_io import load_region, save_region
from lm_eval_lingreg.regions import Region, apply

from helpers import (
    EXPERTS,
    MOE_FAMILIES,
    SENTENCES,
    TOP_K,
    assert_unchanged,
    check_frozen_exact_and_rest_moved,
    lingreg,
    make_tiny,
    random_region,
    snapshot,
    tiny_tokenizer,
    train_frozen,
)

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
    before = snapshot(moe)
    region = random_region(moe, 0.05, seed=2)
    frozen, _ = train_frozen(moe, region, IDS, 3, lr=1e-2, weight_decay=0.01)
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


# selection per expert, and how a region spreads over the experts ----------------------------------------------------


def _skewed_scores(shapes: dict) -> dict:
    """Scores that rank every entry of expert 0 above every other expert's, in every fused expert tensor."""
    gen = torch.Generator().manual_seed(0)
    out = {}
    for name, shape in shapes.items():
        s = torch.rand(shape, generator=gen)
        if len(shape) == 3:
            s[0] += 10
        out[name] = s
    return out


@pytest.mark.parametrize("mono", [False, True])
def test_per_expert_selection_gives_each_expert_its_share_and_leaves_dense_tensors_alone(mono):
    from lm_eval_lingreg.selection import select_core, select_monolingual

    shapes = scope_shapes(make_tiny("qwen3_moe"))
    scores = {"en": _skewed_scores(shapes), "fr": {n: torch.rand(s, generator=torch.Generator().manual_seed(1)) for n, s in shapes.items()}}

    def pick(per_expert: bool) -> Region:
        if mono:
            return select_monolingual(lambda lang, n: scores[lang][n], shapes, "en", ["en", "fr"], 0.1, per_expert=per_expert)
        return select_core(lambda lang, n: scores["en"][n], shapes, ["en"], 0.1, per_expert=per_expert)

    whole, each = pick(False), pick(True)
    assert each.metadata["per_expert"] is True and "per_expert" not in whole.metadata
    for name, shape in shapes.items():
        if len(shape) == 3:
            size = torch.Size(shape[1:]).numel()
            per = torch.bincount(each.indices[name] // size, minlength=shape[0])
            assert torch.bincount(whole.indices[name] // size, minlength=shape[0])[1:].sum() == 0  # per tensor: all in expert 0
            if not mono:
                assert per.tolist() == [int(0.1 * size)] * shape[0]
            else:
                assert bool((per > 0).all())
        else:
            assert torch.equal(each.indices[name], whole.indices[name]), name


@pytest.fixture(scope="module")
def moe_dir(tmp_path_factory):

    root = tmp_path_factory.mktemp("moe")
    make_tiny("qwen3_moe").save_pretrained(root / "model")
    tiny_tokenizer().save_pretrained(root / "model")
    (root / "text").mkdir()
    for iso, lines in (("en", SENTENCES[:1]), ("fr", SENTENCES[1:2]), ("zh", SENTENCES[2:3])):
        (root / "text" / f"{iso}.txt").write_text("\n".join(f"{s} ({i})" for i in range(30) for s in lines), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def moe_scores(moe_dir):

    out = moe_dir / "scores"
    args = ["--pretrained", moe_dir / "model", "--langs", "en,fr,zh", "--data", moe_dir / "text", "--samples", "4", "--out", out, "--device", "cpu"]
    assert lingreg("score", *args).returncode == 0
    return out


def test_extract_per_expert_and_mask_info_show_the_spread_over_experts(moe_scores, tmp_path):
    import json

    for flag in ([], ["--per-expert"]):
        out = tmp_path / f"core{len(flag)}.safetensors"
        assert lingreg("extract", "core", "--scores", moe_scores, "--langs", "en,fr,zh", "--ratio", "0.1", *flag, "--out", out).returncode == 0
    each = load_region(tmp_path / "core1.safetensors")
    assert each.metadata["per_expert"] is True
    proc = lingreg("mask", "info", tmp_path / "core1.safetensors")
    assert proc.returncode == 0 and "spreads over the experts" in proc.stdout and f"{EXPERTS:.1f} of {EXPERTS}" in proc.stdout
    rows = json.loads(lingreg("mask", "info", tmp_path / "core0.safetensors", "--json").stdout)["experts"]
    assert [r["layer"] for r in rows] == [0, 1] and all(len(r["per_expert"]) == EXPERTS and sum(r["per_expert"]) == r["selected"] for r in rows)
    mono = tmp_path / "mono.safetensors"
    args = ["extract", "monolingual", "--scores", moe_scores, "--langs", "en,fr,zh", "--lang", "zh", "--per-expert", "--out", mono]
    assert lingreg(*args).returncode == 0 and load_region(mono).metadata["per_expert"] is True
    proc = lingreg("extract", "magnitude", "--per-expert", "--out", tmp_path / "x.safetensors")
    assert proc.returncode == 2 and "--per-expert does not apply" in proc.stderr


def test_a_dense_region_has_no_expert_spread_and_the_methods_report_leaves_it_out():
    from lm_eval_lingreg.experiments.methods import expert_lines
    from lm_eval_lingreg.experts import has_experts, spread, spread_rows

    dense = random_region(make_tiny("llama"))
    assert not has_experts(dense.shapes) and spread(dense) == {} and expert_lines({}) == []
    moe_region = random_region(make_tiny("mixtral"), 0.1)
    lines = expert_lines({"core": spread_rows(moe_region)})
    assert sum(line.startswith("| core | ") for line in lines) == 2 and "effective experts" in "\n".join(lines)


# each expert's neurons (LAPE), routing, and the language-specific experts report ---------------------------------------


def test_recomputed_expert_activations_are_the_ones_the_fused_forward_computes():
    """The experts' call, captured by a hook, and the module's own weights give exactly the activations that
    transformers' reference loop over experts computes (seen here through its act_fn, one call per expert hit)."""
    from lm_eval_lingreg.capture import hooked
    from lm_eval_lingreg.experts import expert_statistics

    model = make_tiny("qwen3_moe")
    model.config._experts_implementation = "eager"  # the loop calls act_fn once per expert, in expert order
    seen = []
    with hooked(model, {"model.layers.1.mlp.experts.act_fn": lambda y: seen.append((y > 0).sum(0).double())}, "output"), torch.no_grad():
        model.model(input_ids=IDS)
    stats = expert_statistics(model, [IDS[0].tolist()])
    hit = [e for e in range(EXPERTS) if stats.routed[1, e] > 0]
    assert stats.tokens == IDS.numel() and stats.routed.sum(-1).tolist() == [2.0 * IDS.numel()] * 2  # top-2 routing
    assert len(seen) == len(hit) and all(torch.equal(stats.active[1, e], counts) for e, counts in zip(hit, seen, strict=True))
    assert stats.active[1].sum() > 0


def test_lape_on_a_moe_model_selects_neurons_per_expert_and_round_trips_through_a_neuron_file(moe_dir, tmp_path):

    from lm_eval_lingreg.sources import load_lape

    calib = ["--pretrained", moe_dir / "model", "--data", moe_dir / "text", "--samples", "4", "--device", "cpu"]
    args = ["extract", "lape", *calib, "--langs", "en,fr,zh", "--top-rate", "0.2", "--gate-up", "--save-neurons", tmp_path / "n.pth"]
    assert lingreg(*args, "--out", tmp_path / "lape.safetensors").returncode == 0
    region, neurons = load_region(tmp_path / "lape.safetensors"), load_lape(tmp_path / "n.pth")
    shapes = scope_shapes(make_tiny("qwen3_moe"))
    experts, hidden, inter = shapes["model.layers.0.mlp.experts.down_proj"]
    assert len(neurons) == 3 and len(neurons[0]) == 2
    union = [torch.unique(torch.cat([lang[layer] for lang in neurons])) for layer in range(2)]
    assert sum(u.numel() for u in union) > 0 and all(int(u.max()) < experts * inter for u in union if u.numel())
    assert {n for n, i in region.indices.items() if i.numel()} <= {f"model.layers.{la}.mlp.experts.{p}" for la in (0, 1) for p in ("down_proj", "gate_up_proj")}
    for layer, u in enumerate(union):
        down = region.mask(f"model.layers.{layer}.mlp.experts.down_proj")
        gate_up = region.mask(f"model.layers.{layer}.mlp.experts.gate_up_proj")
        for n in u.tolist():
            e, j = divmod(n, inter)
            assert down[e, :, j].all() and gate_up[e, j].all() and gate_up[e, inter + j].all()
        assert int(down.sum()) == u.numel() * hidden and int(gate_up.sum()) == 2 * u.numel() * shapes[f"model.layers.{layer}.mlp.experts.gate_up_proj"][2]
    back = tmp_path / "back.safetensors"
    assert lingreg("extract", "lape", "--pretrained", moe_dir / "model", "--neurons", tmp_path / "n.pth", "--gate-up", "--out", back).returncode == 0
    assert load_region(back).digest() == region.digest()


def test_lape_reads_phi3s_fused_gate_up_projection():
    from lm_eval_lingreg.sources import activation_probabilities, lape_neurons, lape_region

    model = make_tiny("phi3")
    samples = {"en": [list(range(3, 40))], "fr": [list(range(100, 140))]}
    probs, tokens = activation_probabilities(model, samples)
    inter = model.model.layers[0].mlp.down_proj.in_features
    assert probs.shape == (2, inter, 2) and tokens == {"en": 37, "fr": 40}
    neurons = lape_neurons(probs, top_rate=0.2)
    region = lape_region(neurons, scope_shapes(model), gate_up=True)
    for layer in range(2):
        u = torch.unique(torch.cat([lang[layer] for lang in neurons]))
        gate_up = region.mask(f"model.layers.{layer}.mlp.gate_up_proj.weight")
        assert int(gate_up.all(1).sum()) == 2 * u.numel() and gate_up[u].all() and gate_up[u + inter].all()


def test_the_language_specific_experts_report(moe_dir, moe_scores, tmp_path):
    import json

    masks = []
    for lang in ("en", "zh"):
        masks.append(tmp_path / f"mono-{lang}.safetensors")
        assert (
            lingreg("extract", "monolingual", "--scores", moe_scores, "--langs", "en,fr,zh", "--lang", lang, "--ratio", "0.1", "--out", masks[-1]).returncode
            == 0
        )
    calib = ["--pretrained", moe_dir / "model", "--data", moe_dir / "text", "--samples", "4", "--device", "cpu"]
    assert lingreg("experts", *masks, *calib, "--langs", "en,fr,zh", "--out", tmp_path / "experts.json").returncode == 0
    report = json.loads((tmp_path / "experts.json").read_text())
    assert report["languages"] == ["en", "fr", "zh"] and report["layers"] == [0, 1]
    for lang in ("en", "fr", "zh"):
        for row in report["per_language"][lang]:
            assert len(row["routing_share"]) == EXPERTS and abs(sum(row["routing_share"]) - 1) < 1e-9
            assert ("region" in row) == (lang != "fr")
    zh, mono_zh = report["per_language"]["zh"][0], load_region(masks[1])
    assert sum(zh["region_per_expert"]) == sum(int(mono_zh.indices[f"model.layers.0.mlp.experts.{p}"].numel()) for p in ("gate_up_proj", "down_proj"))
    proc = lingreg("experts", *masks, *calib, "--out", tmp_path / "experts.md")
    text = (tmp_path / "experts.md").read_text()
    assert proc.returncode == 0 and "## zh" in text and "## fr" not in text and "most language-specific experts" in text
    core = tmp_path / "core.safetensors"
    assert lingreg("extract", "core", "--scores", moe_scores, "--langs", "en,fr,zh", "--out", core).returncode == 0
    proc = lingreg("experts", core, *calib)
    assert proc.returncode == 2 and "names no language" in proc.stderr
    proc = lingreg("experts", *masks, *calib, "--out", masks[0])
    assert proc.returncode == 2 and "one of the inputs" in proc.stderr
    proc = lingreg("experts", *calib, "--langs", "en")
    assert proc.returncode == 0 and "## en" in proc.stdout


def test_wanda_weighs_each_expert_by_its_own_routed_inputs_and_the_router_by_every_token(moe):
    from lm_eval_lingreg.experts import expert_statistics
    from lm_eval_lingreg.sources import input_norms, select_wanda

    sample = [IDS[0].tolist(), list(range(40, 70))]
    stats = expert_statistics(moe, sample, neurons=False, inputs=True)
    torch.testing.assert_close(stats.hidden_sq.sum(1), TOP_K * stats.router_sq)  # each token reaches TOP_K experts
    assert bool(((stats.routed == 0)[..., None] == (stats.hidden_sq == 0).all(-1, keepdim=True)).all())
    norms, tokens = input_norms(moe, sample)
    assert tokens == 38 and norms["model.layers.0.mlp.experts.down_proj"].shape == (EXPERTS, stats.inner_sq.shape[2])
    region = select_wanda(moe, norms, 0.25, per_row=True)
    for name, shape in scope_shapes(moe).items():
        if "experts" in name or is_router(name):
            per_row = torch.bincount(region.indices[name] // shape[-1], minlength=torch.Size(shape[:-1]).numel())
            assert per_row.tolist() == [int(0.25 * shape[-1])] * per_row.numel(), name


def test_the_methods_experiment_reports_the_spread_over_experts_on_a_moe_model(moe_dir, tmp_path):
    import dataclasses
    import json

    from lm_eval_lingreg import experiments
    from lm_eval_lingreg.experiments import methods
    from lm_eval_lingreg.models import LingregLM
    from lm_eval_lingreg.selection import select_random

    lm = LingregLM(pretrained=str(moe_dir / "model"), device="cpu", dtype="float32", batch_size=1)
    core = save_region(select_random(scope_shapes(lm.model), 0.05, seed=3), tmp_path / "core.safetensors")
    plan = methods.Plan(langs=["ar", "zh"], samples=4, ratio=0.05, core=str(core), mono="", eval_langs=["en"], limit=1)
    out = tmp_path / "methods"
    seconds = methods.run(lm, plan, out)
    page = methods.section(out, experiments.write_record(out, "methods", dataclasses.asdict(plan), seconds, "test"))
    info = json.loads((out / "methods.json").read_text())
    assert set(info["experts"]) == {"core", "wanda", "magnitude", "lape"} and info["super_weights"] == []
    assert "## How each definition spreads over the experts" in page and "| wanda | 1 |" in page


def test_scores_reach_every_expert_and_the_router(moe_scores):
    from lm_eval_lingreg.scores import ScoreSet

    scores = ScoreSet(moe_scores, ["en", "fr", "zh"])
    for layer in (0, 1):
        for part in ("gate_up_proj", "down_proj"):
            s = scores.get("zh", f"model.layers.{layer}.mlp.experts.{part}")
            assert s.shape[0] == EXPERTS and bool((s.reshape(EXPERTS, -1).abs().sum(1) > 0).all()), (layer, part)
        assert scores.get("zh", f"model.layers.{layer}.mlp.gate.weight").abs().sum() > 0
