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
from lm_eval_lingreg.results import LOWER_IS_BETTER, MEAN_METRICS, METRICS, Run, check_metric, geomean, row_name, row_order, run_by_label

BASELINE_SCHEMA = "lm-eval-lingreg/baselines/v1"
BASELINE_FIELDS = ("source", "citation", "model", "condition", "language", "metric", "value", "kind", "note", "convention")


# tables ------------------------------------------------------------------------------------------


def check_convention(run: Run, base: Run, allow_mixed: bool = False) -> None:
    """Ratios between runs that counted BOS differently are refused unless `allow_mixed`."""
    if run.convention != base.convention and not allow_mixed:
        raise ReportError(
            f"{run.label} scored documents with rolling_bos={run.convention} but {base.label} with rolling_bos={base.convention}: "
            "lm-eval's own convention (score) also counts p(BOS|BOS), which alone moves token perplexity by up to 20%, so their ratio "
            "would measure the convention, not the condition. Evaluate both with the same wrapper settings, or pass --allow-mixed-bos"
        )


def build_table(runs: Sequence[Run], metric: str = "bits_per_byte", ratio_to: str | None = None, ci: float | None = None, allow_mixed: bool = False):
    """A pandas DataFrame: rows = the languages (or translation pairs) the runs have + a summary row, columns = run labels.

    Absolute values, or each run compared with the run labelled `ratio_to`: a ratio for perplexity
    metrics, a difference (run - base) for the generation and translation metrics, which are means
    over outputs. The summary row is the arithmetic mean for absolute values (as the lm-eval groups),
    the geometric mean for ratios and the mean for differences; a row missing in a run is NaN there
    and left out of that run's summary. With `ci` (e.g. 0.95) every cell is an `uncertainty.Interval`:
    the paired bootstrap over documents (perplexity) or over outputs (the other metrics).
    """
    import pandas as pd

    check_metric(metric)
    labels = [r.label for r in runs]
    base = run_by_label(runs, ratio_to) if ratio_to is not None else None
    if base is not None:
        for r in runs:
            check_convention(r, base, allow_mixed)
    rows = row_order(row for r in runs for row, v in r.values.items() if metric in v)
    if not rows:
        raise ReportError(f"no run has {metric} (its tasks: {_metric_tasks(metric)})")
    data = {r.label: [_cell(r, base, row, metric, ci) for row in rows] for r in runs}
    df = pd.DataFrame(data, index=[row_name(row) for row in rows], columns=labels)
    df.loc[summary_label(metric, base is not None)] = [
        _summary(r, base, [row for row in rows if metric in r.values.get(row, {})], metric, ci, list(df[r.label])) for r in runs
    ]
    df.index.name = "language"
    return df


def summary_label(metric: str, compared: bool) -> str:
    if not compared:
        return "Mean"
    return "Mean difference" if metric in MEAN_METRICS else "Geometric mean"


def _metric_tasks(metric: str) -> str:
    from lm_eval_lingreg.results import GEN_METRICS, MT_METRICS

    return "lingreg_gen_<iso>" if metric in GEN_METRICS else "lingreg_mt_<src>_<tgt>" if metric in MT_METRICS else "lingreg_ppl_<iso>"


def compare_values(v: float, b: float, metric: str) -> float:
    """run against base: a ratio for perplexity metrics, a difference for means over outputs."""
    if math.isnan(v) or math.isnan(b):
        return math.nan
    if metric in MEAN_METRICS:
        return v - b
    return v / b if b else math.nan


def _cell(run: Run, base: Run | None, row: str, metric: str, ci: float | None):
    from lm_eval_lingreg import uncertainty

    if metric not in run.values.get(row, {}) or (base is not None and metric not in base.values.get(row, {})):
        return math.nan
    if ci is not None:
        return uncertainty.ratio_interval(run, base, row, metric, ci) if base is not None else uncertainty.value_interval(run, row, metric, ci)
    v = run.value(row, metric)
    return compare_values(v, base.value(row, metric), metric) if base is not None else v


def _summary(run: Run, base: Run | None, rows: list[str], metric: str, ci: float | None, column: list):
    from lm_eval_lingreg import uncertainty

    if ci is not None:
        if base is not None:
            return uncertainty.geomean_ratio_interval(run, base, [row for row in rows if metric in base.values.get(row, {})], metric, ci)
        return uncertainty.mean_value_interval(run, rows, metric, ci)
    if base is not None and metric not in MEAN_METRICS:
        return geomean(column)
    return _mean(column)


def _mean(values: Sequence[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else math.nan


def fmt_short(x: float) -> str:
    """3 significant digits, exponent form from 1e4 on (report prose and compact tables)."""
    if math.isnan(x) or math.isinf(x):
        return str(x)
    return f"{x:.3g}" if abs(x) < 1e4 else f"{x:.2e}"


def fmt_value(v: Any) -> str:
    if hasattr(v, "lo"):  # an interval
        return f"{fmt_value(v.value)} [{fmt_value(v.lo)}, {fmt_value(v.hi)}]"
    if isinstance(v, float) and math.isnan(v):
        return "missing"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"


def render_table(df, fmt: str = "markdown") -> str:
    """markdown | csv | latex | html | json."""
    from tabulate import tabulate

    if fmt == "json":
        cell = lambda v: [v.value, v.lo, v.hi] if hasattr(v, "lo") else (None if math.isnan(v) else v)  # noqa: E731
        return json.dumps({c: {i: cell(v) for i, v in df[c].items()} for c in df.columns}, indent=1, default=str).replace("Infinity", '"inf"')
    if fmt == "csv" and any(hasattr(v, "lo") for c in df.columns for v in df[c]):
        return df.map(fmt_value).to_csv()
    if fmt == "csv":
        return df.to_csv(float_format="%.6g", na_rep="missing")
    cells = [[i, *(fmt_value(v) for v in row)] for i, row in zip(df.index, df.itertuples(index=False), strict=True)]
    headers = [df.index.name or "", *df.columns]
    table_fmt = {"markdown": "github", "latex": "latex_booktabs", "html": "html"}.get(fmt)
    if table_fmt is None:
        raise ReportError(f"unknown format {fmt!r}; choose markdown, csv, latex, html or json")
    return tabulate(cells, headers=headers, tablefmt=table_fmt, disable_numparse=True)


# baselines --------------------------------------------------------------------------------------


def _number(v: Any, what: str, where: str, allow_inf: bool = False) -> float:
    """A number as written in a rule or baseline: a finite number, or (where allowed) the word inf; never
    1e400 (which a float reader turns into inf), 4_0 (which float() reads as 40) or a 5,000-digit string.
    `what` shows the value in messages: "value {v}" or "`min: {v}`"."""

    def show(x: Any) -> str:
        return what.format(v=repr(x) if isinstance(x, str) else str(x)[:40])

    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise ReportError(f"{where}: {show(v)} is not a number")
    if isinstance(v, str):
        text = v.strip()
        if allow_inf and text.lower() in ("inf", "+inf", "infinity"):
            return math.inf
        if "_" in text or len(text) > 100:
            raise ReportError(f"{where}: {show(text[:40])} is not a number as written here (digits, a point, an exponent)")
        try:
            v = float(text)
        except ValueError as exc:
            raise ReportError(f"{where}: {show(text[:40])} is not a number") from exc
    try:
        value = float(v)
    except OverflowError as exc:
        raise ReportError(f"{where}: {show(str(v)[:40] + '...')} is not a number (too large for a float)") from exc
    if math.isinf(value):
        hint = "; write inf if the reference really was infinite" if allow_inf else ""
        raise ReportError(f"{where}: {show(v)} is beyond the range of a float, not a number it can have{hint}")
    return value


def _in_range(value: float, metric: str, what: str, where: str) -> float:
    from lm_eval_lingreg.results import MEAN_RANGE

    if metric in MEAN_RANGE and not math.isnan(value) and not 0 <= value <= MEAN_RANGE[metric]:
        raise ReportError(f"{where}: {what} {value:g} is outside 0-{MEAN_RANGE[metric]:g}, the range of {metric}; no run can have it")
    return value


def _baseline_value(v: Any, where: str) -> float:
    value = _number(v, "value {v}", where, allow_inf=True)
    if math.isnan(value):
        raise ReportError(f"{where}: value is NaN; a baseline entry needs a number (drop the entry if the run had none)")
    if value < 0:
        raise ReportError(f"{where}: value {value:g} is negative; every metric of this package is >= 0")
    return value


def _is_row(code: str) -> bool:
    """A language code, or a translation pair SRC-TGT of two different ones."""
    src, sep, tgt = code.partition("-")
    return code in LANGUAGES if not sep else src in LANGUAGES and tgt in LANGUAGES and src != tgt


def load_baseline(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Entries of a baseline file (JSON with `schema` and `values`, or CSV with the same columns)."""
    path = Path(path)
    from lm_eval_lingreg.strict import loads_json, read_csv, read_text

    if not path.exists():
        raise ReportError(f"baseline file {path} not found (shipped ones are in baselines/)")
    text = read_text(path, ReportError, "baseline file")
    if path.suffix.lower() == ".csv":
        rows: list[Any] = read_csv(text, ReportError, str(path))
    else:
        data = loads_json(text, ReportError, str(path), finite=True)
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
        if not _is_row(row["language"]):
            raise ReportError(f"{where}: unknown language code {row['language']!r}; codes are {','.join(LANGUAGES)} (or SRC-TGT for translation)")
        value = _in_range(_baseline_value(row["value"], where), row["metric"], "value", where)
        out.append({k: row.get(k) for k in BASELINE_FIELDS} | {"value": value})
    seen: dict[tuple, tuple[int, float]] = {}
    for i, row in enumerate(out):
        key = tuple(str(row[k]) for k in ("source", "model", "condition", "language", "metric"))
        if key in seen and seen[key][1] != row["value"]:
            raise ReportError(
                f"{path}: entries {seen[key][0]} and {i} give {key[2]} {key[3]} {key[4]} from the same source two values "
                f"({seen[key][1]!r} and {row['value']!r}); keep one"
            )
        seen.setdefault(key, (i, row["value"]))
    return out


def baseline_from_runs(runs: Sequence[Run], source: str, model: str, metric: str = "token_perplexity", note: str = "") -> dict[str, Any]:
    """A baseline file's content from runs of this tool (one entry per condition x language).

    Values a run does not have (NaN) are left out: a baseline holds numbers only.
    """
    values = []
    for r in runs:
        for iso in row_order(r.values):
            v = r.value(iso, metric)
            if metric in r.values[iso] and not math.isnan(v):
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
                        "convention": r.convention,
                    }
                )
    if not values:
        raise ReportError(f"no {metric} value in these runs is a number (all missing or NaN): nothing to record as a baseline")
    return {"schema": BASELINE_SCHEMA, "values": values}


def check_tolerance(rtol: float, atol: float) -> None:
    for name, v in (("rtol", rtol), ("atol", atol)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise ReportError(f"--{name} must be a finite number >= 0, got {v!r}")


def compare(
    runs: Sequence[Run], baseline: Sequence[Mapping[str, Any]], rtol: float = 0.05, atol: float = 0.0, ci: float | None = None, allow_mixed: bool = False
) -> list[dict[str, Any]]:
    """Each baseline value matched to a run (by condition label) and language; with deltas and a verdict.

    With `ci`, a difference beyond the tolerance is flagged only when the run's bootstrap interval excludes the baseline value.
    """
    from lm_eval_lingreg import uncertainty

    check_tolerance(rtol, atol)
    by_label = {r.label: r for r in runs}
    rows = []
    for b in baseline:
        run = by_label.get(str(b["condition"]))
        metric = b["metric"] if b["metric"] in METRICS else "token_perplexity"  # a paper's own perplexity: closest is per token
        got = run.value(b["language"], metric) if run else math.nan
        want = b["value"]
        interval = None
        if run is not None and b.get("convention") and b["convention"] != run.convention and not allow_mixed:
            raise ReportError(
                f"the baseline for {b['condition']} {b['language']} was measured with rolling_bos={b['convention']} but {run.label} with "
                f"rolling_bos={run.convention}; compare like with like, or pass --allow-mixed-bos"
            )
        if run is None or b["language"] not in run.values or metric not in run.values[b["language"]]:
            status = "missing"
        elif math.isnan(got):
            status = "nan"  # the run has the value, and it is NaN: the model broke, a failure
        elif math.isinf(want) or math.isinf(got):
            status = "ok" if got == want else ("worse" if got > want else "better")
        else:
            tol = atol + rtol * abs(want)
            status = "ok" if abs(got - want) <= tol else ("worse" if (got > want) == LOWER_IS_BETTER[metric] else "better")
            if status != "ok" and ci is not None:
                interval = uncertainty.value_interval(run, b["language"], metric, ci)
                status = status if interval.excludes(want) else "ok"
        rows.append(
            {
                **b,
                "compared_metric": metric,
                "interval": interval,
                "got": got,
                "delta": got - want if not (math.isnan(got) or math.isnan(want)) else math.nan,
                "rel": (got / want - 1) if want and not (math.isnan(got) or math.isnan(want) or math.isinf(want)) else math.nan,
                "status": status,
            }
        )
    return rows


# checks -----------------------------------------------------------------------------------------

_RULE_KEYS = {"name", "condition", "metric", "ratio_to", "min", "max", "languages", "exclude", "ci"}


def _bound(v: Any, key: str, where: str) -> float | None:
    if v is None:
        return None
    value = _number(v, f"`{key}: {{v}}`", where)
    if math.isnan(value):
        raise ReportError(f"{where}: `{key}` is NaN; give a number")
    return value


def _codes(v: Any, key: str, where: str) -> list[str] | None:
    if v is None or v == "all":
        return None
    items = [x.strip() for x in v.split(",")] if isinstance(v, str) else v
    if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
        raise ReportError(f"{where}: `{key}` must be a list of language codes or 'all'")
    unknown = [x for x in items if not _is_row(x)]
    if unknown:
        raise ReportError(f"{where}: `{key}` has unknown language code(s) {unknown}; codes are {','.join(LANGUAGES)} (or SRC-TGT for translation)")
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
    ci: float | None = None  # with a level (e.g. 95), min must hold on the interval's lower end and max on its upper end

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> Rule:
        unknown = set(d) - _RULE_KEYS
        if unknown:
            raise ReportError(f"{where}: unknown rule key(s) {', '.join(sorted(map(str, unknown)))}")
        lo, hi = _bound(d.get("min"), "min", where), _bound(d.get("max"), "max", where)
        if d.get("condition") in (None, "") or (lo is None and hi is None):
            raise ReportError(f"{where}: a rule needs `condition` and at least one of `min`/`max`")
        if lo is not None and hi is not None and lo > hi:
            raise ReportError(f"{where}: min {lo:g} is above max {hi:g}; no value can pass")
        metric = d.get("metric", "token_perplexity")
        if metric not in METRICS:
            raise ReportError(f"{where}: unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
        _check_rule_fits(metric, d, lo, hi, where)
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
            _level(d.get("ci"), where),
        )


def _check_rule_fits(metric: str, d: Mapping[str, Any], lo: float | None, hi: float | None, where: str) -> None:
    """A rule that no run could ever pass, or that names rows its metric has not, is bad input (exit 2), not a regression."""
    from lm_eval_lingreg.results import MEAN_RANGE, MT_METRICS

    pairs = metric in MT_METRICS
    for key in ("languages", "exclude"):
        items = d.get(key)
        items = [x.strip() for x in items.split(",")] if isinstance(items, str) and items != "all" else items if isinstance(items, list) else []
        wrong = [x for x in items if isinstance(x, str) and ("-" in x) != pairs]
        if wrong:
            want = "translation pairs SRC-TGT (en-fr)" if pairs else "language codes (fr)"
            raise ReportError(f"{where}: `{key}` has {wrong[:3]}, but {metric} is reported per {want}")
    if metric in MEAN_RANGE:
        top = MEAN_RANGE[metric]
        low = -top if d.get("ratio_to") is not None else 0.0
        for name, b in (("min", lo), ("max", hi)):
            if b is not None and not low <= b <= top:
                kind = "a difference to the base run" if d.get("ratio_to") is not None else "a value"
                raise ReportError(f"{where}: `{name}: {b:g}` is outside {low:g}..{top:g}, where {kind} of {metric} lies; no run could meet it as meant")


def _level(v: Any, where: str) -> float | None:
    from lm_eval_lingreg.uncertainty import check_level

    if v is None:
        return None
    value = _bound(v, "ci", where)
    try:
        return check_level(value)
    except ReportError as e:
        raise ReportError(f"{where}: {e}") from e


def load_rules(path: str | os.PathLike) -> list[Rule]:

    from lm_eval_lingreg.strict import loads_yaml, read_text

    path = Path(path)
    if not path.exists():
        raise ReportError(f"rules file {path} not found")
    data = loads_yaml(read_text(path, ReportError, "rules file"), ReportError, str(path))
    items = data.get("rules") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise ReportError(f"{path}: expected a `rules:` list")
    rules = []
    for i, d in enumerate(items):
        if not isinstance(d, dict):
            raise ReportError(f"{path} rule {i + 1}: expected a mapping")
        rules.append(Rule.from_dict(d, f"{path} rule {i + 1}"))
    return rules


def apply_rules(runs: Sequence[Run], rules: Sequence[Rule], allow_mixed: bool = False) -> list[dict[str, Any]]:
    """One row per rule x matching run x language: value, bounds, pass/fail (missing values fail).

    A rule with `ci` judges the bootstrap interval: `min` must hold on its lower end and `max` on its upper end.
    """
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
            if base is not None:
                check_convention(run, base, allow_mixed)
            langs = [iso for iso in (rule.languages or [row for row in row_order(run.values) if rule.metric in run.values[row]]) if iso not in rule.exclude]
            if not langs:  # a rule that checks nothing must not pass
                out.append(
                    {"rule": rule.name, "run": run.label, "language": "-", "value": math.nan, "ok": False, "why": f"{run.label} has no {rule.metric} to check"}
                )
            out += [_judge(rule, run, base, iso) for iso in langs]
    return out


def _judge(rule: Rule, run: Run, base: Run | None, iso: str) -> dict[str, Any]:
    """One rule on one language of one run: the value (or interval) and the verdict."""
    from lm_eval_lingreg import uncertainty

    row = {"rule": rule.name, "run": run.label, "language": iso}
    v = run.value(iso, rule.metric)
    if base is not None:
        v = compare_values(v, base.value(iso, rule.metric), rule.metric)
    if math.isnan(v):
        return row | {"value": v, "ok": False, "why": "missing or NaN" if iso in run.values else f"{run.label} has no {row_name(iso)}"}
    lo = hi = v
    if rule.ci is not None:
        interval = (
            uncertainty.ratio_interval(run, base, iso, rule.metric, rule.ci) if base is not None else uncertainty.value_interval(run, iso, rule.metric, rule.ci)
        )
        lo, hi, v = interval.lo, interval.hi, interval
    if rule.min is not None and lo < rule.min:
        why = f"below min {rule.min:g}" + (f" at the interval's lower end ({lo:.4g})" if rule.ci is not None else "")
    elif rule.max is not None and hi > rule.max:
        why = f"above max {rule.max:g}" + (f" at the interval's upper end ({hi:.4g})" if rule.ci is not None else "")
    else:
        why = ""
    return row | {"value": v, "ok": not why, "why": why}
