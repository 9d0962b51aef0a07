"""Reports from runs: leaderboard tables, baselines with provenance, comparisons and rule checks.

Reading runs lives in `results`, figures in `plots`. Everything here is pure: runs and
baseline entries in, tables and verdicts out; the CLI prints and decides exit codes.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lm_eval_lingreg.errors import ReportError
from lm_eval_lingreg.languages import LANGUAGES
from lm_eval_lingreg.results import LOWER_IS_BETTER, MEAN_METRICS, METRICS, Run, check_metric, geomean, is_row, row_name, row_order, run_by_label
from lm_eval_lingreg.strict import read_number

__all__ = [
    "BASELINE_SCHEMA",
    "BASELINE_FIELDS",
    "check_convention",
    "build_table",
    "summary_label",
    "compare_values",
    "fmt_short",
    "fmt_value",
    "render_table",
    "load_baseline",
    "baseline_from_runs",
    "check_tolerance",
    "compare",
]

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
    from lm_eval_lingreg.results import GEN_METRICS, MT_METRICS, STEER_METRICS

    if metric in STEER_METRICS:
        return "lingreg_steer_<src>_<tgt>"
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


def _in_range(value: float, metric: str, what: str, where: str) -> float:
    from lm_eval_lingreg.results import MEAN_RANGE

    if metric in MEAN_RANGE and not math.isnan(value) and not 0 <= value <= MEAN_RANGE[metric]:
        raise ReportError(f"{where}: {what} {value:g} is outside 0-{MEAN_RANGE[metric]:g}, the range of {metric}; no run can have it")
    return value


def _baseline_value(v: Any, where: str) -> float:
    value = read_number(v, "value {v}", where, ReportError, allow_inf=True)
    if math.isnan(value):
        raise ReportError(f"{where}: value is NaN; a baseline entry needs a number (drop the entry if the run had none)")
    if value < 0:
        raise ReportError(f"{where}: value {value:g} is negative; every metric of this package is >= 0")
    return value


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
        if not is_row(row["language"]):
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
