"""`lingreg dims`, `scan`, `generate` and `hf-perturbed`: tiny models for mechanics, the bundled model for the claim."""

from __future__ import annotations

import json
import math

import pytest
import torch

from helpers import bin_path, run, tiny_tokenizer

from lm_eval_lingreg.dimensions import dimension_counts, plot_dimensions
from lm_eval_lingreg.perturbation import Perturbation
from lm_eval_lingreg.region_io import save_region
from lm_eval_lingreg.regions import Region, named_parameters, scope_shapes
from lm_eval_lingreg.scan import ProbeSet, generate, probe_perplexity, probe_texts, random_dims, scan


def _region_on_dims(model) -> Region:
    """Norm entry 7 (layer 0), column 7 of q_proj (layer 1, 2 of its 32 rows), row 7 of o_proj (layer 0, 5 entries), row 3 of down_proj."""
    shapes = scope_shapes(model)
    q = shapes["model.layers.1.self_attn.q_proj.weight"]
    o = shapes["model.layers.0.self_attn.o_proj.weight"]
    d = shapes["model.layers.1.mlp.down_proj.weight"]
    idx = {
        "model.layers.0.input_layernorm.weight": [7],
        "model.layers.1.self_attn.q_proj.weight": [0 * q[1] + 7, 5 * q[1] + 7],
        "model.layers.0.self_attn.o_proj.weight": [7 * o[1] + c for c in range(5)],
        "model.layers.1.mlp.down_proj.weight": [3 * d[1] + 1],
        "model.layers.1.self_attn.k_proj.weight": [],
    }
    return Region.from_indices(idx, shapes, {"kind": "test"})


def test_dimension_counts_are_exact(tiny_model):
    dc = dimension_counts(_region_on_dims(tiny_model))
    assert dc.hidden == 32
    assert dc.ranked(2) == [7, 3]
    row = dc.row(7)
    assert (row["total"], row["norm"], row["read"], row["write"]) == (8, 1, 2, 5)
    assert row["top_layers"] == {0: 6, 1: 2}
    assert dc.row(3)["write"] == 1 and int(dc.total.sum()) == 9
    # every dimension has the same number of entries: one per norm, one column per reader, one row per writer
    n_norms = 2 if "Llama" in type(tiny_model).__name__ else 4
    assert dc.entries_per_dim == 2 * (n_norms + (32 + 16 + 16 + 64 + 64) + (32 + 64))


def test_dims_cli_json_and_plot(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    mask = save_region(_region_on_dims(model), tmp_path / "r.safetensors")
    proc = run([bin_path("lingreg"), "dims", str(mask), "--top", "3", "--json", str(tmp_path / "d.json"), "--plot", str(tmp_path / "d.png"),
                "--activations", "--pretrained", str(tiny_model_dir), "--langs", "en,fr", "--samples", "2"])
    assert proc.returncode == 0
    data = json.loads((tmp_path / "d.json").read_text())
    assert [r["dim"] for r in data["dims"]][:2] == [7, 3] and data["hidden_size"] == 32
    assert data["activations"]["tokens"] > 0 and all(1 <= r["activation_rank"] <= 32 for r in data["dims"])
    assert (tmp_path / "d.png").read_bytes()[:4] == b"\x89PNG"


def test_plot_svg(tiny_model, tmp_path):
    plot_dimensions(dimension_counts(_region_on_dims(tiny_model)), str(tmp_path / "d.svg"), top=3)
    assert "<svg" in (tmp_path / "d.svg").read_text()[:500]


def test_probe_perplexity_matches_the_model_loss(tiny_model):
    tok = tiny_tokenizer()
    probe = ProbeSet.build(tok, {"en": ["All human beings are born free."], "fr": ["Tous les êtres humains naissent libres et égaux."]})
    ppl = probe_perplexity(tiny_model, probe)
    for iso, text in (("en", "All human beings are born free."), ("fr", "Tous les êtres humains naissent libres et égaux.")):
        ids = tok(text, return_tensors="pt").input_ids
        with torch.no_grad():
            want = math.exp(tiny_model(input_ids=ids, labels=ids).loss.item())
        assert ppl[iso] == pytest.approx(want, rel=1e-4)


def test_scan_ranks_and_restores_exactly(tiny_model):
    tok = tiny_tokenizer()
    probe = ProbeSet.build(tok, probe_texts(["en", "zh"], docs=1), max_tokens=32)
    before = {n: p.clone() for n, p in named_parameters(tiny_model).items()}
    cands = [(f"d{d}", [Perturbation(op="mul", value=50.0, dims=(d,), layers=(0,))]) for d in (1, 5, 9)]
    cands.append(("noop", [Perturbation(op="mul", value=1.0, dims=(2,), layers=(0,))]))
    res = scan(tiny_model, probe, cands, progress=False)
    assert [r["rank"] for r in res["rows"]] == [1, 2, 3, 4]
    ratios = [r["geomean_ratio"] for r in res["rows"]]
    assert ratios == sorted(ratios, reverse=True)
    noop = next(r for r in res["rows"] if r["label"] == "noop")
    assert noop["geomean_ratio"] == pytest.approx(1.0, abs=1e-6)
    for n, p in named_parameters(tiny_model).items():
        assert torch.equal(p, before[n])


def test_scan_validates_every_candidate_first(tiny_model):
    from lm_eval_lingreg.perturbation import PerturbationError

    probe = ProbeSet.build(tiny_tokenizer(), {"en": ["hello world"]})
    with pytest.raises(PerturbationError, match="out of range"):
        scan(tiny_model, probe, [("ok", [Perturbation(op="zero", dims=(1,), layers=(0,))]), ("bad", [Perturbation(op="zero", dims=(99,), layers=(0,))])], progress=False)


def test_random_dims_excludes_and_is_seeded():
    a = random_dims(64, 10, exclude=range(20), seed=3)
    assert a == random_dims(64, 10, exclude=range(20), seed=3) and len(set(a)) == 10 and min(a) >= 20


def test_generate_side_by_side_restores(tiny_model):
    tok = tiny_tokenizer()
    conds = {"base": [], "broken": [Perturbation(op="mul", value=1000.0, dims=(3,), layers=None)], "base again": []}
    rows = generate(tiny_model, tok, ["All human beings", "人人生而"], conds, max_new_tokens=5)
    assert [(r["condition"], r["prompt"]) for r in rows][:2] == [("base", "All human beings"), ("base", "人人生而")]
    by = {(r["condition"], r["prompt"]): r["continuation"] for r in rows}
    assert by[("base", "All human beings")] == by[("base again", "All human beings")]


def test_scan_and_generate_cli(tiny_model_dir, tmp_path):
    proc = run([bin_path("lingreg"), "params", "--pretrained", str(tiny_model_dir), "--filter", r"layers\.0\."])
    assert proc.returncode == 0 and "embed_tokens" not in proc.stdout
    assert "column d (reads)" in proc.stdout and "row d (writes)" in proc.stdout and "norm entry d" in proc.stdout
    out = tmp_path / "scan.json"
    proc = run([bin_path("lingreg"), "scan", "--pretrained", str(tiny_model_dir), "--dims", "3,5,random:2", "--langs", "en,zh",
                "--docs", "1", "--tokens", "32", "--modules", "norms", "-o", str(out)])
    assert proc.returncode == 0
    data = json.loads(out.read_text())
    assert len(data["rows"]) == 4 and {r["label"].split(":")[0] for r in data["rows"]} == {"given", "random"}
    assert "x ppl zh" in proc.stdout
    proc = run([bin_path("lingreg"), "generate", "--pretrained", str(tiny_model_dir), "--prompt", "All human", "--max-new-tokens", "3",
                "--compare", "base,layer=0:dim=3:op=mul:value=100", "--compare", "param=model.layers.0.input_layernorm.weight:index=2:op=zero",
                "-o", str(tmp_path / "gen.json")])
    assert proc.returncode == 0
    gens = json.loads((tmp_path / "gen.json").read_text())["generations"]
    assert [g["condition"] for g in gens] == ["base", "layer=0:dim=3:op=mul:value=100", "param=model.layers.0.input_layernorm.weight:index=2:op=zero"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["scan", "--dims", "top:3"], "needs a region"),
        (["scan", "--dims", "5", "--layer", "7"], "layer 7 out of range"),
        (["scan", "--dims", "99"], "out of range"),
        (["scan", "--dims", "3", "--param", "model.layers.0.nope.weight"], "no such parameter"),
        (["generate", "--prompt", "x", "--compare", "layer=0:dim=1:op=explode"], "unknown op"),
        (["dims", "/nonexistent.safetensors"], "not found"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(tiny_model_dir, args, message):
    proc = run([bin_path("lingreg"), *args, *(["--pretrained", str(tiny_model_dir)] if args[0] != "dims" else [])])
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


# hf-perturbed through the real lm_eval CLI ------------------------------------------------------


def test_hf_perturbed_records_spec_and_hash(tiny_model_dir, tmp_path):
    from lm_eval_lingreg.perturbation import parse_spec, spec_sha256

    spec = "layer=1:dim=3:op=mul:value=4;param=model.layers.0.mlp.down_proj.weight:row=2:col=5:op=zero"
    proc = run([bin_path("lm_eval"), "--model", "hf-perturbed", "--model_args", f"pretrained={tiny_model_dir},perturb={spec},dtype=float32",
                "--tasks", "lingreg_ppl_en", "--limit", "1", "--device", "cpu", "--output_path", str(tmp_path)])
    assert proc.returncode == 0
    res = json.loads(sorted(tmp_path.rglob("results*.json"))[-1].read_text())
    info = res["config"]["lingreg"]
    assert info["perturbation_sha256"] == spec_sha256(parse_spec(spec))
    assert info["perturbations"][0]["dims"] == [3] and info["perturbations"][1]["row"] == 2
    assert info["entries_changed"] > 1
    assert res["results"]["lingreg_ppl_en"]["token_perplexity,none"] > 1


def test_hf_perturbed_plain_keys_and_errors(tiny_model_dir, tmp_path):
    proc = run([bin_path("lm_eval"), "--model", "hf-perturbed", "--model_args", f"pretrained={tiny_model_dir},layer=0,dim=2,modules=norms+o_proj,op=mul,value=4",
                "--tasks", "lingreg_ppl_en", "--limit", "1", "--device", "cpu", "--output_path", str(tmp_path)])
    assert proc.returncode == 0
    info = json.loads(sorted(tmp_path.rglob("results*.json"))[-1].read_text())["config"]["lingreg"]
    assert info["perturbations"] == [{"layers": [0], "dims": [2], "modules": ["norms", "o_proj"], "op": "mul", "value": 4.0, "on": "param"}]
    proc = run([bin_path("lm_eval"), "--model", "hf-perturbed", "--model_args", f"pretrained={tiny_model_dir},layer=0,dim=999,op=mul,value=4",
                "--tasks", "lingreg_ppl_en", "--limit", "1", "--device", "cpu", "--output_path", str(tmp_path / "bad")])
    assert proc.returncode != 0 and "dim=999 out of range: the hidden size is 32" in proc.stderr


# the claim, on the real bundled model ----------------------------------------------------------


@pytest.mark.slow
def test_top_region_dimensions_break_the_bundled_model_far_more_than_random_ones(bundled_model_dir):
    """Finding 2: multiplying layer 1's entries on a top core-region dimension by 4 hurts far more than on random dimensions."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lm_eval_lingreg.region_io import load_region

    model = AutoModelForCausalLM.from_pretrained(bundled_model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(bundled_model_dir)
    top = dimension_counts(load_region("core-top-1")).ranked(5)
    rand = random_dims(640, 5, exclude=top, seed=0)
    cands = [(f"{kind}:d{d}", [Perturbation(op="mul", value=4.0, dims=(d,), layers=(1,))]) for kind, dims in (("top", top), ("random", rand)) for d in dims]
    probe = ProbeSet.build(tok, probe_texts(["en", "zh", "ar"], docs=1), max_tokens=64)
    res = scan(model, probe, cands, progress=False)
    g = {r["label"]: r["geomean_ratio"] for r in res["rows"]}
    top_r = sorted(v for k, v in g.items() if k.startswith("top"))
    rand_r = sorted(v for k, v in g.items() if k.startswith("random"))
    print("top", top_r, "random", rand_r)
    assert top_r[-1] > 100 * rand_r[-1]  # the worst top dimension is orders of magnitude worse
    assert top_r[2] > rand_r[2]  # and the median top dimension is worse than the median random one
