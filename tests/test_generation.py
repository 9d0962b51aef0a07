"""Greedy continuations side by side: conditions applied in turn, the model restored exactly after each."""

from __future__ import annotations

import pytest

from lm_eval_lingreg.errors import UsageError
from lm_eval_lingreg.generation import generate, parse_conditions
from lm_eval_lingreg.perturbation import Perturbation

from helpers import assert_unchanged, snapshot


def test_generate_side_by_side_restores(tiny_model, tok):
    before = snapshot(tiny_model)
    conds = {"base": [], "broken": [Perturbation(op="mul", value=1000.0, dims=(3,), layers=None)], "base again": []}
    rows = generate(tiny_model, tok, ["All human beings", "人人生而"], conds, max_new_tokens=5)
    assert [(r["condition"], r["prompt"]) for r in rows][:2] == [("base", "All human beings"), ("base", "人人生而")]
    by = {(r["condition"], r["prompt"]): r["continuation"] for r in rows}
    assert by[("base", "All human beings")] == by[("base again", "All human beings")]
    assert_unchanged(tiny_model, before)  # the weights are back, bit for bit


def test_conditions_and_bad_arguments(tiny_model, tok):
    conds = parse_conditions(["base,layer=0:dim=3:op=mul:value=100", "mask=core"])
    assert list(conds) == ["base", "layer=0:dim=3:op=mul:value=100", "mask=core"] and conds["base"] == []
    with pytest.raises(UsageError, match="--prompt is empty"):
        generate(tiny_model, tok, [" "], {"base": []})
    with pytest.raises(UsageError, match="--max-new-tokens"):
        generate(tiny_model, tok, ["x"], {"base": []}, max_new_tokens=0)
    with pytest.raises(UsageError, match="more than the model's context of 256"):
        generate(tiny_model, tok, ["x"], {"base": []}, max_new_tokens=10**12)
