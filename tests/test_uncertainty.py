"""Bootstrap intervals over documents, the BOS convention check, and per-document scores from both writers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lm_eval_lingreg.errors import ReportError
from lm_eval_lingreg.report import build_table, compare, render_table
from lm_eval_lingreg.results import load_runs, read_run
from lm_eval_lingreg.rules import apply_rules, load_rules
from lm_eval_lingreg.uncertainty import geomean_ratio_interval, ratio_interval, value_interval

from helpers import lingreg


def _run_file(path, label, docs, convention="context", with_tokens=True):
    """A results JSON as lingreg writes it: metrics from the documents, per-document scores, provenance."""
    results, tables = {}, {}
    for iso, rows in docs.items():
        ll = [r[0] for r in rows]
        tokens = [r[1] for r in rows]
        nbytes = [4 * t for t in tokens]
        results[f"lingreg_ppl_{iso}"] = {
            "bits_per_byte,none": -sum(ll) / sum(nbytes) / math.log(2),
            "byte_perplexity,none": math.exp(-sum(ll) / sum(nbytes)),
            "word_perplexity,none": 1.0,
            **({"token_perplexity,none": math.exp(-sum(ll) / sum(tokens))} if with_tokens else {}),
        }
        tables[f"lingreg_ppl_{iso}"] = {
            "doc_id": list(range(len(rows))),
            "loglikelihood": ll,
            "bytes": nbytes,
            "words": tokens,
            **({"tokens": tokens} if with_tokens else {}),
        }
    path.mkdir(parents=True)
    data = {"results": results, "config": {"lingreg": {"condition": label, "rolling_bos": convention}}, "lingreg_documents": tables}
    (path / "results.json").write_text(json.dumps(data))
    return path


@pytest.fixture
def runs(tmp_path):
    rng = np.random.default_rng(0)
    base = {iso: [(-float(rng.uniform(150, 250)), 100) for _ in range(31)] for iso in ("en", "zh")}
    worse = {iso: [(ll * float(rng.uniform(1.1, 1.3)), n) for ll, n in rows] for iso, rows in base.items()}
    _run_file(tmp_path / "base", "base", base)
    _run_file(tmp_path / "worse", "worse", worse)
    _run_file(tmp_path / "few", "few", {iso: rows[:2] for iso, rows in worse.items()})
    _run_file(tmp_path / "few-base", "few-base", {iso: rows[:2] for iso, rows in base.items()})
    return {r.label: r for r in load_runs([tmp_path])}


def test_intervals_contain_the_point_and_shrink_with_more_documents(runs):
    full = ratio_interval(runs["worse"], runs["base"], "en", "token_perplexity")
    two = ratio_interval(runs["few"], runs["few-base"], "en", "token_perplexity")
    assert full.lo <= full.value <= full.hi and two.lo <= two.value <= two.hi
    assert full.value == pytest.approx(runs["worse"].value("en", "token_perplexity") / runs["base"].value("en", "token_perplexity"))
    assert full.width < two.width and full.value > 1
    assert ratio_interval(runs["worse"], runs["base"], "en", "token_perplexity") == full  # seeded
    same = ratio_interval(runs["base"], runs["base"], "en", "token_perplexity")
    assert same.value == same.lo == same.hi == pytest.approx(1.0)
    v = value_interval(runs["base"], "zh", "bits_per_byte")
    assert v.lo <= runs["base"].value("zh", "bits_per_byte") <= v.hi
    g = geomean_ratio_interval(runs["worse"], runs["base"], ["en", "zh"], "token_perplexity")
    assert g.lo <= g.value <= g.hi and g.value == pytest.approx(
        math.sqrt(full.value * ratio_interval(runs["worse"], runs["base"], "zh", "token_perplexity").value)
    )


def test_tables_print_intervals(runs):
    df = build_table([runs["base"], runs["worse"]], "token_perplexity", ratio_to="base", ci=0.95)
    text = render_table(df, "markdown")
    assert "[" in text and "Geometric mean" in text
    assert json.loads(render_table(df, "json"))["worse"]["English (en)"][0] == pytest.approx(df.loc["English (en)", "worse"].value)


def test_rules_can_require_the_interval_to_clear_the_bound(runs, tmp_path):
    point = ratio_interval(runs["worse"], runs["base"], "en", "token_perplexity")
    bound = (point.lo + point.value) / 2  # the point clears it, the interval's lower end does not
    for ci, ok in ((None, True), (95, False)):
        (tmp_path / "r.yaml").write_text(f"rules:\n  - {{condition: worse, ratio_to: base, min: {bound}, languages: [en]{', ci: ' + str(ci) if ci else ''}}}\n")
        (row,) = apply_rules([runs["base"], runs["worse"]], load_rules(tmp_path / "r.yaml"))
        assert row["ok"] is ok, row


def test_compare_flags_only_what_the_interval_excludes(runs):
    value = runs["worse"].value("en", "token_perplexity")
    inside = value_interval(runs["worse"], "en", "token_perplexity")
    near = {"source": "s", "model": "m", "condition": "worse", "language": "en", "metric": "token_perplexity", "value": (inside.lo + value) / 2}
    assert compare([runs["worse"]], [near], rtol=0.0)[0]["status"] == "worse"
    assert compare([runs["worse"]], [near], rtol=0.0, ci=0.95)[0]["status"] == "ok"
    far = dict(near, value=inside.lo / 2)
    assert compare([runs["worse"]], [far], rtol=0.0, ci=0.95)[0]["status"] == "worse"


def test_ratios_between_bos_conventions_are_refused_unless_asked(runs, tmp_path):
    _run_file(tmp_path / "lm", "lm-eval-style", {"en": [(-200.0, 100)] * 31, "zh": [(-200.0, 100)] * 31}, convention="score")
    mixed = [runs["base"], read_run(tmp_path / "lm" / "results.json")]
    with pytest.raises(ReportError, match="rolling_bos=score but base with rolling_bos=context.*--allow-mixed-bos"):
        build_table(mixed, "token_perplexity", ratio_to="base")
    assert build_table(mixed, "token_perplexity", ratio_to="base", allow_mixed=True) is not None
    proc = lingreg("table", tmp_path / "lm", tmp_path / "base", "--ratio-to", "base", "--metric", "token_perplexity")
    assert proc.returncode == 2 and "--allow-mixed-bos" in proc.stderr


def test_intervals_need_per_document_scores(runs, tmp_path):
    from pathlib import Path

    old = Path(__file__).resolve().parent / "data" / "results" / "regions"
    with pytest.raises(ReportError, match="no per-document scores.*--log_samples"):
        build_table(load_runs([old]), "token_perplexity", ratio_to="base", ci=0.95)
    _run_file(tmp_path / "hf", "plain", {"en": [(-200.0, 100)] * 3}, with_tokens=False)
    with pytest.raises(ReportError, match="no per-document tokens"):
        value_interval(read_run(tmp_path / "hf" / "results.json"), "en", "token_perplexity")


def test_samples_files_from_lm_eval_log_samples_are_read(runs, tmp_path):
    stamp = "2026-11-24T10-00-00.000001"
    out = tmp_path / "lm_eval_out" / "model"
    out.mkdir(parents=True)
    src = json.loads((runs["base"].path).read_text())
    (out / f"results_{stamp}.json").write_text(json.dumps({"results": src["results"], "config": src["config"]}))
    for task, t in src["lingreg_documents"].items():
        rows = [
            {"doc_id": d, "bits_per_byte": [ll, b], "word_perplexity": [ll, w], "token_perplexity": [ll, n]}
            for d, ll, b, w, n in zip(t["doc_id"], t["loglikelihood"], t["bytes"], t["words"], t["tokens"], strict=True)
        ]
        (out / f"samples_{task}_{stamp}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    run = read_run(out / f"results_{stamp}.json")
    assert set(run.documents) == {"en", "zh"} and run.documents["en"].loglikelihood == src["lingreg_documents"]["lingreg_ppl_en"]["loglikelihood"]


def test_cli_table_ci_costs_and_plot(runs, tmp_path):
    root = runs["base"].path.parent.parent
    proc = lingreg("table", root / "base", root / "worse", "--metric", "token_perplexity", "--ratio-to", "base", "--ci", "95", "--costs")
    assert proc.returncode == 0 and "[" in proc.stdout and "tokens/s" in proc.stdout
    assert lingreg("plot", root / "base", root / "worse", "--ci", "95", "-o", tmp_path / "ci.png").returncode == 0
    assert (tmp_path / "ci.png").read_bytes()[:4] == b"\x89PNG"
    assert lingreg("table", root / "base", "--ci", "200").returncode == 2
