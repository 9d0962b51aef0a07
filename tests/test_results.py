"""Reading runs: labels from what was recorded, NaN/inf kept, malformed files named."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from lm_eval_lingreg.errors import ReportError
from lm_eval_lingreg.report import build_table, render_table
from lm_eval_lingreg.results import geomean, load_runs, read_run

DATA = Path(__file__).resolve().parent / "data" / "results"
REGIONS = DATA / "regions"


def test_labels_come_from_what_the_run_recorded():
    runs = load_runs([DATA])
    labels = {r.label for r in runs}
    assert {"base", "core-top-1", "core-bottom-1", "core-random-1", "before"} <= labels
    cli = next(r for r in runs if "lm_eval_cli" in str(r.path))
    assert cli.label == "perturbed param=model.layers.1.pre_feedforward_layernorm.weight:index=299:op=mul:value=4"
    assert set(cli.values) == {"zh", "en"}


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


def test_geomean_is_one_rule_everywhere():
    assert geomean([2.0, 8.0]) == pytest.approx(4.0)
    assert geomean([2.0, float("nan"), 8.0]) == pytest.approx(4.0)  # missing languages are left out
    assert math.isinf(geomean([2.0, math.inf])) and math.isnan(geomean([])) and math.isnan(geomean([0.0, 2.0])) and math.isnan(geomean([-1.0]))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.__setitem__("config", [1, 2]), "'config' must be a JSON object"),
        (lambda d: d["config"].__setitem__("lingreg", "x"), "'config.lingreg' must be a JSON object"),
        (lambda d: d["results"]["lingreg_ppl_en"].__setitem__("token_perplexity,none", -3.0), "token_perplexity -3; perplexities are >= 1"),
        (lambda d: d["results"]["lingreg_ppl_en"].__setitem__("bits_per_byte,none", -0.5), "bits_per_byte -0.5; perplexities are >= 1 and bits per byte >= 0"),
    ],
)
def test_malformed_results_name_the_file(tmp_path, mutate, message):
    data = json.loads((REGIONS / "base" / "results.json").read_text())
    mutate(data)
    (tmp_path / "results.json").write_text(json.dumps(data))
    with pytest.raises(ReportError, match=message):
        read_run(tmp_path / "results.json")
