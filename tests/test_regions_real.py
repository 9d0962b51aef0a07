"""Finding 1 and 3 on the real bundled model, with the shipped masks (CI-sized subsets)."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import REPO, bin_path, run

from lm_eval_lingreg.evaluation import evaluate_conditions, per_language
from lm_eval_lingreg.region_io import load_region, shipped_masks

pytestmark = pytest.mark.slow

#: three of the six scoring languages and three that played no part in scoring
LANGS = ["zh", "ar", "es", "en", "ja", "sw"]


@pytest.fixture(scope="module")
def lm(bundled_model_dir):
    from lm_eval_lingreg.models import RegionAblatedLM

    return RegionAblatedLM(pretrained=str(bundled_model_dir), device="cpu", dtype="float32", batch_size=1)


def _ratios(lm, masks: list[str], langs: list[str], limit: int, output_dir=None) -> dict[str, dict[str, float]]:
    results = evaluate_conditions(lm, {"base": None, **{m: load_region(m) for m in masks}}, langs, limit=limit, output_dir=output_dir)
    base = per_language(results["base"], "token_perplexity")
    return {m: {iso: per_language(results[m], "token_perplexity")[iso] / base[iso] for iso in langs} for m in masks}


def test_shipped_masks_cover_the_issue_list():
    names = set(shipped_masks())
    for pct in (1, 3, 5):
        assert {f"core-top-{pct}", f"core-bottom-{pct}", f"core-random-{pct}"} <= names
    assert {f"mono-{iso}-1" for iso in ("ar", "es", "ru", "zh", "ko", "vi")} <= names and "core" in names


def test_core_region_breaks_every_language_while_bottom_barely_matters(lm, tmp_path):
    ratios = _ratios(lm, ["core-top-1", "core-bottom-1", "core-random-1"], LANGS, limit=2, output_dir=tmp_path)
    print(ratios)
    # the project's regression gate: the same expectations through `lingreg check`, as a user's CI would run it
    proc = run([bin_path("lingreg"), "check", str(tmp_path), "--rules", str(REPO / "baselines" / "rules-bundled.yaml")])
    assert proc.returncode == 0 and proc.stdout.startswith(f"PASS: {3 * len(LANGS)} checks"), proc.stdout
    for iso in LANGS:
        top, bottom, rnd = ratios["core-top-1"][iso], ratios["core-bottom-1"][iso], ratios["core-random-1"][iso]
        assert top >= 100, f"{iso}: core top-1% only raised perplexity {top:.1f}x"
        assert bottom < 1.5, f"{iso}: bottom-1% raised perplexity {bottom:.2f}x"
        assert bottom < rnd < top or math.isclose(rnd, bottom, rel_tol=0.05), (iso, bottom, rnd, top)


def test_monolingual_region_hurts_its_own_language_most(lm):
    langs = ["ar", "zh", "ko", "en", "fr", "de"]
    masks = ["mono-ar-1", "mono-zh-1", "mono-ko-1"]
    ratios = _ratios(lm, masks, langs, limit=2)
    print(ratios)
    for mask in masks:
        own = mask.split("-")[1]
        others = [ratios[mask][iso] for iso in langs if iso != own]
        assert ratios[mask][own] > max(others), (mask, ratios[mask])


def test_scores_on_the_real_model_are_bit_identical_across_runs(bundled_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lm_eval_lingreg.corpora import make_samples
    from lm_eval_lingreg.importance import importance, sum_gradients

    model = AutoModelForCausalLM.from_pretrained(bundled_model_dir)
    tok = AutoTokenizer.from_pretrained(bundled_model_dir)
    ids = make_samples(tok, "vi", 3, seed=5).input_ids
    a = importance(model, sum_gradients(model, ids, batch_size=2, pad_id=tok.pad_token_id).grads)
    b = importance(model, sum_gradients(model, ids, batch_size=2, pad_id=tok.pad_token_id).grads)
    assert all(torch.equal(a[n], b[n]) for n in a)
