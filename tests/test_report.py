"""table / compare / check / plot / baseline on recorded lm-eval results (tests/data/results, real outputs)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from helpers import REPO, bin_path, run

from lm_eval_lingreg.report import (
    ReportError,
    apply_rules,
    build_table,
    compare,
    load_baseline,
    load_rules,
    load_runs,
    read_run,
    render_table,
)

DATA = Path(__file__).resolve().parent / "data" / "results"
REGIONS = DATA / "regions"
RULES = REPO / "baselines" / "rules-bundled.yaml"


def _lingreg(*args: str):
    return run([bin_path("lingreg"), *args])


def test_labels_come_from_what_the_run_recorded():
    runs = load_runs([DATA])
    labels = {r.label for r in runs}
    assert {"base", "core-top-1", "core-bottom-1", "core-random-1", "before"} <= labels
    cli = next(r for r in runs if "lm_eval_cli" in str(r.path))
    assert cli.label == "perturbed param=model.layers.1.pre_feedforward_layernorm.weight:index=299:op=mul:value=4"
    assert set(cli.values) == {"zh", "en"}


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


def test_nan_values_and_malformed_files(tmp_path):
    data = json.loads((REGIONS / "base" / "results.json").read_text())
    data["results"]["lingreg_ppl_zh"]["token_perplexity,none"] = float("nan")
    (tmp_path / "nan").mkdir()
    (tmp_path / "nan" / "results.json").write_text(json.dumps(data))
    run_ = read_run(tmp_path / "nan" / "results.json")
    assert math.isnan(run_.value("zh", "token_perplexity")) and "missing" in render_table(build_table([run_], "token_perplexity"))
    bad = tmp_path / "bad"
    bad.mkdir()
    text = (REGIONS / "base" / "results.json").read_text()
    (bad / "results.json").write_text(text[: len(text) // 2])  # a run killed while writing
    with pytest.raises(ReportError, match="not valid JSON.*partly written"):
        load_runs([bad])
    (bad / "results.json").write_text(json.dumps({"results": {"arc_easy": {"acc,none": 0.5}}}))
    with pytest.raises(ReportError, match="no lingreg_ppl_<iso> results"):
        load_runs([bad])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ReportError, match="no results JSON found"):
        load_runs([empty])


def test_user_labels_and_duplicates(tmp_path):
    shutil.copytree(REGIONS / "base", tmp_path / "again")
    runs = load_runs([REGIONS / "base", tmp_path / "again"])
    assert [r.label for r in runs] == ["base", "base #2"]
    runs = load_runs([REGIONS / "base", tmp_path / "again"], labels={str(tmp_path / "again"): "rerun"})
    assert [r.label for r in runs] == ["base", "rerun"]


def test_compare_flags_disagreement():
    runs = load_runs([REGIONS])
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
    (tmp_path / "b.json").write_text(json.dumps({"schema": "lm-eval-lingreg/baselines/v1", "values": [{"model": "m", "condition": "base", "language": "en", "metric": "token_perplexity", "value": 3}]}))
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
    proc = _lingreg("check", str(broken), "--rules", str(RULES))
    assert proc.returncode == 1 and "FAIL: 30 of" in proc.stdout and "core-top-1 ar = 1 (below min 100)" in proc.stdout


def test_check_exit_codes(tmp_path):
    proc = _lingreg("check", str(REGIONS), "--rules", str(RULES), "--baseline", str(REPO / "baselines" / "gemma-3-270m-regions.json"))
    assert proc.returncode == 0 and proc.stdout.startswith("PASS")
    proc = _lingreg("check", str(REGIONS), "--baseline", str(REPO / "baselines" / "gemma-3-270m-regions.json"), "--strict")
    assert proc.returncode == 1 and "missing" in proc.stdout
    (tmp_path / "rules.yaml").write_text("rules:\n  - {condition: base, mni: 3}\n")
    proc = _lingreg("check", str(REGIONS), "--rules", str(tmp_path / "rules.yaml"))
    assert proc.returncode == 2 and "unknown rule key(s) mni" in proc.stderr
    proc = _lingreg("check", str(tmp_path / "nowhere"), "--rules", str(RULES))
    assert proc.returncode == 2 and "no such file or directory" in proc.stderr
    proc = _lingreg("check", str(REGIONS))
    assert proc.returncode == 2 and "--baseline and/or --rules" in proc.stderr


def test_table_plot_and_baseline_cli(tmp_path):
    proc = _lingreg("table", str(REGIONS), "--metric", "token_perplexity", "--ratio-to", "base", "--format", "latex", "-o", str(tmp_path / "t.tex"))
    assert proc.returncode == 0 and "\\toprule" in (tmp_path / "t.tex").read_text()
    proc = _lingreg("table", str(REGIONS), "--ratio-to", "nope")
    assert proc.returncode == 2 and "no run with that label" in proc.stderr
    for name in ("h.png", "h.svg"):
        assert _lingreg("plot", str(REGIONS), "-o", str(tmp_path / name)).returncode == 0
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG" and "<svg" in (tmp_path / "h.svg").read_text()[:400]
    assert _lingreg("plot", "--mask", "core", "-o", str(tmp_path / "d.png")).returncode == 0
    proc = _lingreg("baseline", str(REGIONS), "-o", str(tmp_path / "b.json"), "--source", "test")
    assert proc.returncode == 0
    assert len(load_baseline(tmp_path / "b.json")) == 4 * 30
    proc = _lingreg("compare", str(DATA / "lm_eval_cli"), "--baseline", str(REPO / "baselines" / "paper-figures.json"),
                    "--label", f"{DATA / 'lm_eval_cli'}=mul4:L1-N2100")
    assert proc.returncode == 0 and "perplexity vs token_perplexity" in proc.stdout and "figure" in proc.stdout


@pytest.mark.slow
def test_reproduce_quick_end_to_end(bundled_model_dir, tmp_path):
    out, doc = tmp_path / "repro", tmp_path / "docs" / "REPRODUCTION.md"
    proc = _lingreg("reproduce", "--quick", "--out", str(out), "--doc", str(doc))
    assert proc.returncode == 0
    text = doc.read_text()
    for heading in ("Finding 1", "Finding 2", "Finding 3", "Finding 4", "Wall time"):
        assert heading in text
    assert "Expectations (`baselines/rules-bundled.yaml`" in text and " of 18 hold" in text
    for fig in ("heatmap.png", "density-core-top-1.png", "dims.png", "forget-curves.png"):
        assert (doc.parent / "figures" / "reproduction" / fig).read_bytes()[:4] == b"\x89PNG"
    # the raw results are ordinary lm-eval results: the other report commands read them
    proc = _lingreg("check", str(out / "results" / "regions"), "--rules", str(RULES))
    assert proc.returncode == 0, proc.stdout
    assert _lingreg("reproduce", "--quick", "--out", str(out), "--doc", str(doc), "--from-results").returncode == 0
