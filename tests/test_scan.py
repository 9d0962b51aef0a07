"""Perturbation scans on one loaded model: probe perplexity, candidates, ranking, exact restore."""

from __future__ import annotations

import math

import pytest
import torch

from lm_eval_lingreg.errors import PerturbationError, UsageError
from lm_eval_lingreg.perturbation import Perturbation
from lm_eval_lingreg.scan import ProbeSet, dimension_candidates, pick_dimensions, probe_perplexity, probe_texts, random_dims, scan, template

from helpers import assert_unchanged, snapshot


def test_probe_perplexity_matches_the_model_loss(tiny_model, tok):
    probe = ProbeSet.build(tok, {"en": ["All human beings are born free."], "fr": ["Tous les êtres humains naissent libres et égaux."]})
    ppl = probe_perplexity(tiny_model, probe)
    for iso, text in (("en", "All human beings are born free."), ("fr", "Tous les êtres humains naissent libres et égaux.")):
        ids = tok(text, return_tensors="pt").input_ids
        with torch.no_grad():
            want = math.exp(tiny_model(input_ids=ids, labels=ids).loss.item())
        assert ppl[iso] == pytest.approx(want, rel=1e-4)


def test_scan_ranks_and_restores_exactly(tiny_model, tok):
    probe = ProbeSet.build(tok, probe_texts(["en", "zh"], docs=1), max_tokens=32)
    before = snapshot(tiny_model)
    cands = dimension_candidates([("big", d) for d in (1, 5, 9)], layers=(0,), op="mul", value=50.0)
    cands += dimension_candidates([("noop", 2)], layers=(0,), op="mul", value=1.0)
    res = scan(tiny_model, probe, cands, progress=False)
    assert [r["rank"] for r in res["rows"]] == [1, 2, 3, 4]
    ratios = [r["geomean_ratio"] for r in res["rows"]]
    assert ratios == sorted(ratios, reverse=True)
    noop = next(r for r in res["rows"] if r["label"] == "noop:d2")
    assert noop["geomean_ratio"] == pytest.approx(1.0, abs=1e-6) and noop["dim"] == 2
    assert_unchanged(tiny_model, before)


def test_scan_validates_every_candidate_first(tiny_model, tok):
    probe = ProbeSet.build(tok, {"en": ["hello world"]})
    with pytest.raises(PerturbationError, match="out of range"):
        scan(
            tiny_model,
            probe,
            [("ok", [Perturbation(op="zero", dims=(1,), layers=(0,))]), ("bad", [Perturbation(op="zero", dims=(99,), layers=(0,))])],
            progress=False,
        )


def test_candidates_from_a_dims_spec():
    ranked = [7, 3, 11, 0]
    picks = pick_dimensions("top:2,5,random:3", ranked, hidden=32, seed=1)
    assert picks[:3] == [("top1", 7), ("top2", 3), ("given", 5)]
    rnd = [d for src, d in picks if src == "random"]
    assert len(rnd) == 3 and not set(rnd) & {7, 3, 5, 11}
    for spec, message in (("top:2", "needs a region"), ("top:x", "top:<count>"), ("40", "out of range"), ("what", "use top:N"), ("", "no candidate")):
        with pytest.raises(UsageError, match=message):
            pick_dimensions(spec, None if spec == "top:2" else ranked, hidden=32)
    cands = dimension_candidates(picks[:2], param="model.layers.1.input_layernorm.weight", op="mul", value=4.0)
    assert [c.label for c in cands] == ["top1:d7", "top2:d3"] and cands[0].perturbations[0].index == 7
    assert template(cands) == "param=model.layers.1.input_layernorm.weight:index=<d>:op=mul:value=4.0"


def test_random_dims_excludes_and_is_seeded():
    a = random_dims(64, 10, exclude=range(20), seed=3)
    assert a == random_dims(64, 10, exclude=range(20), seed=3) and len(set(a)) == 10 and min(a) >= 20
    with pytest.raises(UsageError, match="cannot draw"):
        random_dims(8, 10, exclude=[])


def test_probe_arguments_are_checked(tok):
    with pytest.raises(UsageError, match="between 1 and 31"):
        probe_texts(["en"], docs=0)
    with pytest.raises(UsageError, match="at least 2"):
        ProbeSet.build(tok, {"en": ["x"]}, max_tokens=1)
