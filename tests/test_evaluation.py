"""Several conditions on one loaded model: each evaluated, recorded and restored exactly."""

from __future__ import annotations

import json

import pytest

from lm_eval_lingreg.anatomy import scope_shapes
from lm_eval_lingreg.errors import UsageError
from lm_eval_lingreg.evaluation import evaluate_conditions, ratio_table
from lm_eval_lingreg.perturbation import parse_spec
from lm_eval_lingreg.results import per_language
from lm_eval_lingreg.selection import select_random

from helpers import assert_unchanged, snapshot


def test_conditions_are_recorded_and_the_model_restored(tiny_lm, tmp_path):
    before = snapshot(tiny_lm.model)
    region = select_random(scope_shapes(tiny_lm.model), 0.2, seed=0)
    conditions = {"base": None, "random": region, "perturbed": parse_spec("layer=0:dim=3:op=mul:value=50"), "again": None}
    res = evaluate_conditions(tiny_lm, conditions, ["en"], limit=1, output_dir=tmp_path)
    assert_unchanged(tiny_lm.model, before)
    ppl = {c: per_language(r, "token_perplexity")["en"] for c, r in res.items()}
    assert ppl["again"] == pytest.approx(ppl["base"], rel=1e-9) and ppl["random"] != pytest.approx(ppl["base"], rel=1e-7)
    saved = json.loads((tmp_path / "random" / "results.json").read_text())["config"]["lingreg"]
    assert saved["condition"] == "random" and saved["entries_changed"] == region.num_selected
    assert json.loads((tmp_path / "perturbed" / "results.json").read_text())["config"]["lingreg"]["perturbation_spec"] == "layers=0:dims=3:op=mul:value=50"
    assert "condition" not in tiny_lm.get_model_info()["lingreg"]  # provenance only while evaluating
    assert "x ppl random" in ratio_table(res, ["en"], 1)


@pytest.mark.parametrize("label", ["../x", "a/b", ".hidden", ""])
def test_labels_must_be_plain_names(tiny_lm, label):
    with pytest.raises(UsageError, match="plain names"):
        evaluate_conditions(tiny_lm, {label: None}, ["en"], limit=1)


def test_documents_can_start_after_the_preamble(tiny_lm):
    """`first=1` reads articles 1.. (the same documents as the full run's), not the preamble."""
    from lm_eval_lingreg.results import DOCUMENTS

    full = evaluate_conditions(tiny_lm, {"base": None}, ["en"], limit=3)["base"][DOCUMENTS]["lingreg_ppl_en"]
    later = evaluate_conditions(tiny_lm, {"base": None}, ["en"], limit=2, first=1)["base"][DOCUMENTS]["lingreg_ppl_en"]
    assert full["doc_id"] == [0, 1, 2] and later["doc_id"] == [1, 2]
    assert later["loglikelihood"] == pytest.approx(full["loglikelihood"][1:], rel=1e-9) and later["tokens"] == full["tokens"][1:]
    for first, limit in ((31, 1), (30, 2), (-1, 1)):
        with pytest.raises(UsageError, match="31 UDHR documents"):
            evaluate_conditions(tiny_lm, {"base": None}, ["en"], limit=limit, first=first)
