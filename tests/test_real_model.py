"""The paper's findings on the real bundled model (Gemma-3-270M) with the shipped masks, CI-sized."""

from __future__ import annotations

import math

import pytest
import torch

from lm_eval_lingreg.evaluation import evaluate_conditions
from lm_eval_lingreg.region_io import load_region, shipped_masks
from lm_eval_lingreg.results import per_language

from helpers import REPO, lingreg

pytestmark = pytest.mark.slow

#: three of the six scoring languages and three that played no part in scoring
LANGS = ["zh", "ar", "es", "en", "ja", "sw"]


def _ratios(lm, masks: list[str], langs: list[str], limit: int, output_dir=None) -> dict[str, dict[str, float]]:
    results = evaluate_conditions(lm, {"base": None, **{m: load_region(m) for m in masks}}, langs, limit=limit, output_dir=output_dir)
    base = per_language(results["base"], "token_perplexity")
    return {m: {iso: per_language(results[m], "token_perplexity")[iso] / base[iso] for iso in langs} for m in masks}


def test_shipped_masks_cover_the_issue_list():
    names = set(shipped_masks())
    for pct in (1, 3, 5):
        assert {f"core-top-{pct}", f"core-bottom-{pct}", f"core-random-{pct}"} <= names
    assert {f"mono-{iso}-1" for iso in ("ar", "es", "ru", "zh", "ko", "vi")} <= names and "core" in names


def test_core_region_breaks_every_language_while_bottom_barely_matters(bundled_lm, tmp_path):
    ratios = _ratios(bundled_lm, ["core-top-1", "core-bottom-1", "core-random-1"], LANGS, limit=2, output_dir=tmp_path)
    print(ratios)
    # the project's regression gate: the same expectations through `lingreg check`, as a user's CI would run it
    proc = lingreg("check", tmp_path, "--rules", REPO / "baselines" / "rules-bundled.yaml")
    assert proc.returncode == 0 and proc.stdout.startswith(f"PASS: {3 * len(LANGS)} checks"), proc.stdout
    for iso in LANGS:
        top, bottom, rnd = ratios["core-top-1"][iso], ratios["core-bottom-1"][iso], ratios["core-random-1"][iso]
        assert top >= 100, f"{iso}: core top-1% only raised perplexity {top:.1f}x"
        assert bottom < 1.5, f"{iso}: bottom-1% raised perplexity {bottom:.2f}x"
        assert rnd > 1.05, f"{iso}: a random 1% should make text less likely ({rnd:.3f}x)"
        assert bottom < rnd < top or math.isclose(rnd, bottom, rel_tol=0.05), (iso, bottom, rnd, top)


def test_monolingual_region_hurts_its_own_language_most(bundled_lm):
    langs = ["ar", "zh", "ko", "en", "fr", "de"]
    masks = ["mono-ar-1", "mono-zh-1", "mono-ko-1"]
    ratios = _ratios(bundled_lm, masks, langs, limit=2)
    print(ratios)
    for mask in masks:
        own = mask.split("-")[1]
        others = [ratios[mask][iso] for iso in langs if iso != own]
        assert ratios[mask][own] > max(others), (mask, ratios[mask])


def test_scores_on_the_real_model_are_bit_identical_across_runs(bundled_lm):
    from lm_eval_lingreg.corpora import make_samples
    from lm_eval_lingreg.importance import importance, sum_gradients

    model, tok = bundled_lm.model, bundled_lm.tokenizer
    ids = make_samples(tok, "vi", 3, seed=5).input_ids
    a = importance(model, sum_gradients(model, ids, batch_size=2, pad_id=tok.pad_token_id).grads)
    b = importance(model, sum_gradients(model, ids, batch_size=2, pad_id=tok.pad_token_id).grads)
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_top_region_dimensions_break_the_bundled_model_far_more_than_random_ones(bundled_lm):
    """Finding 2: multiplying layer 1's entries on a top core-region dimension by 4 hurts far more than on random dimensions."""
    from lm_eval_lingreg.dimensions import dimension_counts
    from lm_eval_lingreg.scan import ProbeSet, dimension_candidates, probe_texts, random_dims, scan

    top = dimension_counts(load_region("core-top-1")).ranked(5)
    rand = random_dims(640, 5, exclude=top, seed=0)
    cands = dimension_candidates([("top", d) for d in top] + [("random", d) for d in rand], layers=(1,), op="mul", value=4.0)
    probe = ProbeSet.build(bundled_lm.tokenizer, probe_texts(["en", "zh", "ar"], docs=1), max_tokens=64)
    res = scan(bundled_lm.model, probe, cands, progress=False)
    g = {r["label"]: r["geomean_ratio"] for r in res["rows"]}
    top_r = sorted(v for k, v in g.items() if k.startswith("top"))
    rand_r = sorted(v for k, v in g.items() if k.startswith("random"))
    print("top", top_r, "random", rand_r)
    assert top_r[-1] > 100 * rand_r[-1]  # the worst top dimension is orders of magnitude worse
    assert top_r[2] > rand_r[2]  # and the median top dimension is worse than the median random one
