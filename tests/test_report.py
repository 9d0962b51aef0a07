"""Tables, baselines, comparisons and rules on recorded lm-eval results (tests/data/results, real outputs)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from lm_eval_lingreg.errors import ReportError
from lm_eval_lingreg.report import baseline_from_runs, build_table, compare, load_baseline, render_table
from lm_eval_lingreg.results import load_runs, read_run
from lm_eval_lingreg.rules import apply_rules, load_rules

from helpers import REPO

DATA = Path(__file__).resolve().parent / "data" / "results"
REGIONS = DATA / "regions"
RULES = REPO / "baselines" / "rules-bundled.yaml"


def test_table_absolute_and_ratio():
    runs = load_runs([REGIONS])
    df = build_table(runs, "token_perplexity", ratio_to="base")
    assert list(df.columns) == ["base", "core-bottom-1", "core-random-1", "core-top-1"]
    assert len(df) == 31 and df.index[-1] == "Geometric mean" and df.index[0] == "Arabic (ar)"
    assert (df["base"] == 1).all() and (df["core-top-1"].iloc[:30] > 1e9).all()
    base = read_run(REGIONS / "base" / "results.json")
    top = read_run(REGIONS / "core-top-1" / "results.json")
    assert df.loc["Chinese (zh)", "core-top-1"] == pytest.approx(top.value("zh", "token_perplexity") / base.value("zh", "token_perplexity"))
    bpb = build_table(runs, "bits_per_byte")
    assert bpb.index[-1] == "Mean" and bpb.loc["Mean", "base"] == pytest.approx(sum(base.value(i, "bits_per_byte") for i in base.values) / 30)


def test_inf_and_missing_are_shown_never_dropped():
    runs = load_runs([REGIONS / "base", REGIONS / "core-top-1", DATA / "partial"])
    df = build_table(runs, "word_perplexity")
    assert math.isinf(df.loc["Chinese (zh)", "core-top-1"])  # recorded as Infinity by lm-eval
    text = render_table(df, "markdown")
    assert "inf" in text and "missing" in text  # the 7-language run has no Czech
    assert "| Czech (cs)" in text
    for fmt in ("csv", "latex", "html", "json"):
        out = render_table(df, fmt)
        assert "Chinese" in out
    assert json.loads(render_table(df, "json"))["before"]["Czech (cs)"] is None


def test_compare_flags_disagreement():
    shipped = REPO / "docs" / "results" / "regions"  # the runs the shipped baseline was made from
    runs = load_runs([shipped / "base", shipped / "core-top-1"])
    base = load_baseline(REPO / "baselines" / "gemma-3-270m-regions.json")
    rows = compare(runs, base)
    by = {(r["condition"], r["language"]): r for r in rows}
    assert by[("base", "zh")]["status"] == "ok" and by[("base", "zh")]["rel"] == pytest.approx(0, abs=1e-12)
    assert by[("mono-ar-1", "ar")]["status"] == "missing"  # not among these runs: shown, not dropped
    shifted = [dict(b, value=b["value"] / 2) if b["condition"] == "base" and b["language"] == "en" else b for b in base]
    assert {(r["condition"], r["language"]): r["status"] for r in compare(runs, shifted)}[("base", "en")] == "worse"


def test_baseline_files_validate(tmp_path):
    paper = load_baseline(REPO / "baselines" / "paper-figures.json")
    assert {b["kind"] for b in paper} == {"figure"} and all(b["citation"] and b["source"] for b in paper)
    (tmp_path / "b.json").write_text(
        json.dumps(
            {
                "schema": "lm-eval-lingreg/baselines/v1",
                "values": [{"model": "m", "condition": "base", "language": "en", "metric": "token_perplexity", "value": 3}],
            }
        )
    )
    with pytest.raises(ReportError, match="lacks source"):
        load_baseline(tmp_path / "b.json")
    (tmp_path / "c.json").write_text(json.dumps({"values": []}))
    with pytest.raises(ReportError, match="schema"):
        load_baseline(tmp_path / "c.json")
    (tmp_path / "d.csv").write_text("source,citation,model,condition,language,metric,value,kind,note\nx,,m,base,en,token_perplexity,inf,measured,\n")
    assert math.isinf(load_baseline(tmp_path / "d.csv")[0]["value"])


def test_rules_pass_on_the_recorded_run_and_fail_on_a_broken_one(tmp_path):
    rules = load_rules(RULES)
    assert all(r["ok"] for r in apply_rules(load_runs([REGIONS]), rules))
    # a "regression": the core region no longer matters (core-top-1 evaluated on the unchanged model)
    broken = tmp_path / "broken"
    shutil.copytree(REGIONS, broken)
    data = json.loads((REGIONS / "base" / "results.json").read_text())
    data["config"]["lingreg"]["condition"] = "core-top-1"
    (broken / "core-top-1" / "results.json").write_text(json.dumps(data))
    failed = [r for r in apply_rules(load_runs([broken]), rules) if not r["ok"]]
    assert len(failed) == 30 and all(r["rule"].startswith("core top-1%") and "below min 100" in r["why"] for r in failed)


def test_baselines_never_hold_nan_and_reject_garbage(tmp_path):
    runs = load_runs([DATA / "partial"])
    data = baseline_from_runs(runs, "test", "m")
    assert all(isinstance(v["value"], (int, float, str)) and v["value"] == v["value"] for v in data["values"])
    for bad, message in (([1], "not a number"), ("abc", "not a number"), (float("nan"), "NaN"), (-3, "negative"), (True, "not a number")):
        (tmp_path / "b.json").write_text(
            json.dumps(
                {
                    "schema": "lm-eval-lingreg/baselines/v1",
                    "values": [{"source": "s", "model": "m", "condition": "base", "language": "en", "metric": "token_perplexity", "value": bad}],
                }
            )
        )
        with pytest.raises(ReportError, match=message):
            load_baseline(tmp_path / "b.json")


@pytest.mark.parametrize(("rtol", "atol"), [(float("nan"), 0.0), (-1.0, 0.0), (0.05, float("inf"))])
def test_tolerances_must_be_finite_and_non_negative(rtol, atol):
    with pytest.raises(ReportError, match="finite number >= 0"):
        compare(load_runs([REGIONS]), [], rtol=rtol, atol=atol)


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("{condition: base, min: abc}", "`min: 'abc'` is not a number"),
        ("{condition: base, min: .nan}", "NaN"),
        ("{condition: base, min: 5, max: 1}", "no value can pass"),
        ("{condition: base, max: 2, languages: [xx]}", "unknown language code"),
        ("{condition: [a], max: 2}", "must be a string"),
        ("{condition: base}", "at least one of"),
    ],
)
def test_malformed_rules_are_bad_input(tmp_path, rule, message):
    (tmp_path / "r.yaml").write_text(f"rules:\n  - {rule}\n")
    with pytest.raises(ReportError, match=message):
        load_rules(tmp_path / "r.yaml")


def test_a_base_run_without_the_metric_says_how_to_fix_the_rule(tmp_path):
    data = json.loads((REGIONS / "base" / "results.json").read_text())
    for row in data["results"].values():
        row.pop("token_perplexity,none", None)
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "results.json").write_text(json.dumps(data))
    rules = load_rules(RULES)
    rows = apply_rules(load_runs([tmp_path / "base", REGIONS / "core-top-1"]), rules)
    assert any("base has no token_perplexity (plain `hf` does not report it): set `metric: bits_per_byte`" in r["why"] for r in rows)


def test_the_gate_is_one_library_call_with_the_same_verdict_as_the_command(tmp_path):
    """`gate` decides what `lingreg check` prints: each failed rule is one failure; a gate given nothing to check is bad input."""
    from lm_eval_lingreg import gate
    from lm_eval_lingreg.errors import UsageError

    from helpers import lingreg

    runs = load_runs([REGIONS])
    assert gate(runs, rules=load_rules(RULES)).passed
    (tmp_path / "fail.yaml").write_text("- {condition: base, metric: token_perplexity, languages: [en, zh], max: 2}\n")
    v = gate(runs, rules=load_rules(tmp_path / "fail.yaml"))
    assert (v.passed, v.checked, len(v.failures)) == (False, 2, 2), v
    proc = lingreg("check", REGIONS, "--rules", tmp_path / "fail.yaml")
    assert proc.returncode == 1 and proc.stdout.startswith("FAIL: 2 of 2 checks failed") and v.failures[0] in proc.stdout
    with pytest.raises(UsageError, match="give a baseline and/or rules"):
        gate(runs)
