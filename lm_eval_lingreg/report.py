"""Reports from runs: leaderboard tables, baselines with provenance, comparisons and rule checks.

Reading runs lives in `results`, figures in `plots`. Everything here is pure: runs and
baseline entries in, tables and verdicts out; the CLI prints and decides exit codes.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lm_eval_lingreg.errors import ReportError
from lm_eval_lingreg.languages import LANGUAGES
from lm_eval_lingreg.results import LOWER_IS_BETTER, METRICS, Run, check_metric, geomean, run_by_label

BASELINE_SCHEMA = "lm-eval-lingreg/baselines/v1"
BASELINE_FIELDS = ("source", "citation", "model", "condition", "language", "metric", "value", "kind", "note")


# tables ------------------------------------------------------------------------------------------


def build_table(runs: Sequence[Run], metric: str = "bits_per_byte", ratio_to: str | None = None):
    """A pandas DataFrame: rows = the 30 languages + a summary row, columns = run labels.

    Absolute values, or each run divided by the run labelled `ratio_to`. The summary row is the
    arithmetic mean for absolute values (as the `lingreg_ppl` group) and the geometric mean for
    ratios; a language missing in a run is NaN there and left out of that run's summary.
    """
    import pandas as pd

    check_metric(metric)
    labels = [r.label for r in runs]
    base = run_by_label(runs, ratio_to) if ratio_to is not None else None
    langs = [iso for iso in LANGUAGES if any(iso in r.values for r in runs)]
    data = {}
    for r in runs:
        col = []
        for iso in langs:
            v = r.value(iso, metric)
            if base is not None:
                b = base.value(iso, metric)
                v = v / b if b and not math.isnan(b) and not math.isnan(v) else math.nan
            col.append(v)
        data[r.label] = col
    index = [f"{LANGUAGES[iso].name} ({iso})" for iso in langs]
    df = pd.DataFrame(data, index=index, columns=labels)
    summary = "Geometric mean" if base is not None else "Mean"
    df.loc[summary] = [geomean(list(df[c])) if base is not None else _mean(list(df[c])) for c in labels]
    df.index.name = "language"
    return df


def _mean(values: Sequence[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else math.nan


def fmt_short(x: float) -> str:
    """3 significant digits, exponent form from 1e4 on (report prose and compact tables)."""
    if math.isnan(x) or math.isinf(x):
        return str(x)
    return f"{x:.3g}" if abs(x) < 1e4 else f"{x:.2e}"


def fmt_value(v: float) -> str:
    if isinstance(v, float) and math.isnan(v):
        return "missing"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"


def render_table(df, fmt: str = "markdown") -> str:
    """markdown | csv | latex | html | json."""
    from tabulate import tabulate

    if fmt == "json":
        return json.dumps({c: {i: (None if math.isnan(v) else v) for i, v in df[c].items()} for c in df.columns}, indent=1, default=str).replace(
            "Infinity", '"inf"'
        )
    if fmt == "csv":
        return df.to_csv(float_format="%.6g", na_rep="missing")
    cells = [[i, *(fmt_value(v) for v in row)] for i, row in zip(df.index, df.itertuples(index=False), strict=True)]
    headers = [df.index.name or "", *df.columns]
    table_fmt = {"markdown": "github", "latex": "latex_booktabs", "html": "html"}.get(fmt)
    if table_fmt is None:
        raise ReportError(f"unknown format {fmt!r}; choose markdown, csv, latex, html or json")
    return tabulate(cells, headers=headers, tablefmt=table_fmt, disable_numparse=True)


# baselines --------------------------------------------------------------------------------------


def _baseline_value(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise ReportError(f"{where}: value {v!r} is not a number")
    try:
        value = float(v)
    except ValueError:
        raise ReportError(f"{where}: value {v!r} is not a number") from None
    if math.isnan(value):
        raise ReportError(f"{where}: value is NaN; a baseline entry needs a number (drop the entry if the run had none)")
    if value < 0:
        raise ReportError(f"{where}: value {value:g} is negative; every lingreg_ppl metric is >= 0")
    return value


def load_baseline(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Entries of a baseline file (JSON with `schema` and `values`, or CSV with the same columns)."""
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"baseline file {path} not found (shipped ones are in baselines/)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ReportError(f"{path}: not UTF-8 text") from None
    if path.suffix.lower() == ".csv":
        import csv
        import io

        rows: list[Any] = list(csv.DictReader(io.StringIO(text)))
    else:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as e:
            raise ReportError(f"{path}: not valid JSON ({str(e)[:120]})") from None
        if not isinstance(data, dict) or data.get("schema") != BASELINE_SCHEMA or not isinstance(data.get("values"), list):
            raise ReportError(f'{path}: expected a JSON object with "schema": "{BASELINE_SCHEMA}" and a "values" list (see baselines/README.md)')
        rows = data["values"]
    out = []
    for i, row in enumerate(rows):
        where = f"{path}: entry {i}"
        if not isinstance(row, dict):
            raise ReportError(f"{where}: expected an object with {', '.join(BASELINE_FIELDS)}")
        missing = [k for k in ("source", "model", "condition", "language", "metric", "value") if row.get(k) in (None, "")]
        if missing:
            raise ReportError(f"{where} lacks {', '.join(missing)} (every value needs its provenance)")
        if row["metric"] not in METRICS and row["metric"] != "perplexity":
            raise ReportError(f"{where}: unknown metric {row['metric']!r}")
        if not isinstance(row["condition"], str) or not isinstance(row["language"], str):
            raise ReportError(f"{where}: condition and language must be strings")
        out.append({k: row.get(k) for k in BASELINE_FIELDS} | {"value": _baseline_value(row["value"], where)})
    return out


def baseline_from_runs(runs: Sequence[Run], source: str, model: str, metric: str = "token_perplexity", note: str = "") -> dict[str, Any]:
    """A baseline file's content from runs of this tool (one entry per condition x language).

    Values a run does not have (NaN) are left out: a baseline holds numbers only.
    """
    values = []
    for r in runs:
        for iso in LANGUAGES:
            v = r.value(iso, metric)
            if iso in r.values and not math.isnan(v):
                values.append(
                    {
                        "source": source,
                        "citation": "",
                        "model": model,
                        "condition": r.label,
                        "language": iso,
                        "metric": metric,
                        "value": str(v) if math.isinf(v) else v,
                        "kind": "measured",
                        "note": note or f"limit={r.limit}",
                    }
                )
    return {"schema": BASELINE_SCHEMA, "values": values}


def check_tolerance(rtol: float, atol: float) -> None:
    for name, v in (("rtol", rtol), ("atol", atol)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise ReportError(f"--{name} must be a finite number >= 0, got {v!r}")


def compare(runs: Sequence[Run], baseline: Sequence[Mapping[str, Any]], rtol: float = 0.05, atol: float = 0.0) -> list[dict[str, Any]]:
    """Each baseline value matched to a run (by condition label) and language; with deltas and a verdict."""
    check_tolerance(rtol, atol)
    by_label = {r.label: r for r in runs}
    rows = []
    for b in baseline:
        run = by_label.get(str(b["condition"]))
        metric = b["metric"] if b["metric"] in METRICS else "token_perplexity"  # a paper's own perplexity: closest is per token
        got = run.value(b["language"], metric) if run else math.nan
        want = b["value"]
        if run is None or math.isnan(got):
            status = "missing"
        elif math.isinf(want) or math.isinf(got):
            status = "ok" if got == want else ("worse" if got > want else "better")
        else:
            tol = atol + rtol * abs(want)
            status = "ok" if abs(got - want) <= tol else ("worse" if (got > want) == LOWER_IS_BETTER[metric] else "better")
        rows.append(
            {
                **b,
                "compared_metric": metric,
                "got": got,
                "delta": got - want if not (math.isnan(got) or math.isnan(want)) else math.nan,
                "rel": (got / want - 1) if want and not (math.isnan(got) or math.isnan(want) or math.isinf(want)) else math.nan,
                "status": status,
            }
        )
    return rows


# checks -----------------------------------------------------------------------------------------

_RULE_KEYS = {"name", "condition", "metric", "ratio_to", "min", "max", "languages", "exclude"}


def _bound(v: Any, key: str, where: str) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise ReportError(f"{where}: `{key}: {v!r}` is not a number")
    try:
        value = float(v)
    except ValueError:
        raise ReportError(f"{where}: `{key}: {v!r}` is not a number") from None
    if math.isnan(value):
        raise ReportError(f"{where}: `{key}` is NaN; give a number")
    return value


def _codes(v: Any, key: str, where: str) -> list[str] | None:
    if v is None or v == "all":
        return None
    items = [x.strip() for x in v.split(",")] if isinstance(v, str) else v
    if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
        raise ReportError(f"{where}: `{key}` must be a list of language codes or 'all'")
    unknown = [x for x in items if x not in LANGUAGES]
    if unknown:
        raise ReportError(f"{where}: `{key}` has unknown language code(s) {unknown}; codes are {','.join(LANGUAGES)}")
    return items


@dataclass
class Rule:
    """An expectation on runs: every (or each listed) language's value, or ratio to a base run, within bounds."""

    name: str
    condition: str  # label or glob
    metric: str = "token_perplexity"
    ratio_to: str | None = None
    min: float | None = None
    max: float | None = None
    languages: Sequence[str] | None = None  # None: every language present
    exclude: Sequence[str] = ()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> Rule:
        unknown = set(d) - _RULE_KEYS
        if unknown:
            raise ReportError(f"{where}: unknown rule key(s) {', '.join(sorted(map(str, unknown)))}")
        lo, hi = _bound(d.get("min"), "min", where), _bound(d.get("max"), "max", where)
        if "condition" not in d or (lo is None and hi is None):
            raise ReportError(f"{where}: a rule needs `condition` and at least one of `min`/`max`")
        if lo is not None and hi is not None and lo > hi:
            raise ReportError(f"{where}: min {lo:g} is above max {hi:g}; no value can pass")
        metric = d.get("metric", "token_perplexity")
        if metric not in METRICS:
            raise ReportError(f"{where}: unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
        for key in ("condition", "ratio_to", "name"):
            if d.get(key) is not None and not isinstance(d[key], (str, int, float)):
                raise ReportError(f"{where}: `{key}` must be a string")
        return cls(
            str(d.get("name") or d["condition"]),
            str(d["condition"]),
            metric,
            None if d.get("ratio_to") is None else str(d["ratio_to"]),
            lo,
            hi,
            _codes(d.get("languages"), "languages", where),
            tuple(_codes(d.get("exclude"), "exclude", where) or ()),
        )


def load_rules(path: str | os.PathLike) -> list[Rule]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ReportError(f"rules file {path} not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as e:
        raise ReportError(f"{path}: not valid UTF-8 YAML ({str(e)[:200]})") from None
    items = data.get("rules") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise ReportError(f"{path}: expected a `rules:` list")
    rules = []
    for i, d in enumerate(items):
        if not isinstance(d, dict):
            raise ReportError(f"{path} rule {i + 1}: expected a mapping")
        rules.append(Rule.from_dict(d, f"{path} rule {i + 1}"))
    return rules


def apply_rules(runs: Sequence[Run], rules: Sequence[Rule]) -> list[dict[str, Any]]:
    """One row per rule x matching run x language: value, bounds, pass/fail (missing values fail)."""
    by_label = {r.label: r for r in runs}
    out = []
    for rule in rules:
        matched = [r for r in runs if fnmatch.fnmatchcase(r.label, rule.condition)]
        if not matched:
            out.append({"rule": rule.name, "run": rule.condition, "language": "-", "value": math.nan, "ok": False, "why": "no run matches this condition"})
            continue
        base = by_label.get(rule.ratio_to) if rule.ratio_to else None
        if rule.ratio_to and base is None:
            out.append(
                {
                    "rule": rule.name,
                    "run": rule.ratio_to,
                    "language": "-",
                    "value": math.nan,
                    "ok": False,
                    "why": f"no run labelled {rule.ratio_to!r} to divide by",
                }
            )
            continue
        if base is not None and not any(rule.metric in v for v in base.values.values()):
            hint = (
                " (plain `hf` does not report it): set `metric: bits_per_byte` in the rule or evaluate base with hf-region-ablated"
                if rule.metric == "token_perplexity"
                else ""
            )
            out.append(
                {"rule": rule.name, "run": base.label, "language": "-", "value": math.nan, "ok": False, "why": f"{base.label} has no {rule.metric}{hint}"}
            )
            continue
        for run in matched:
            langs = [iso for iso in (rule.languages or [iso for iso in LANGUAGES if iso in run.values]) if iso not in rule.exclude]
            for iso in langs:
                v = run.value(iso, rule.metric)
                if base is not None:
                    b = base.value(iso, rule.metric)
                    v = v / b if not math.isnan(b) and b else math.nan
                if math.isnan(v):
                    ok, why = False, ("missing or NaN" if iso in run.values else f"{run.label} has no {LANGUAGES[iso].name}")
                else:
                    ok = (rule.min is None or v >= rule.min) and (rule.max is None or v <= rule.max)
                    why = "" if ok else (f"below min {rule.min:g}" if rule.min is not None and v < rule.min else f"above max {rule.max:g}")
                out.append({"rule": rule.name, "run": run.label, "language": iso, "value": v, "ok": ok, "why": why})
    return out
