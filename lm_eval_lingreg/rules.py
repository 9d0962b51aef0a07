"""Regression rules: expectations on runs (a value, or a comparison with a base run, within bounds) and their verdicts.

A rules file (YAML, read strictly) lists rules; `apply_rules` judges every matching run and language.
`gate` is the regression gate of `lingreg check`: baseline values and rules judged together, one verdict.
"""

from __future__ import annotations

import fnmatch
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lm_eval_lingreg.errors import ReportError, UsageError
from lm_eval_lingreg.languages import LANGUAGES
from lm_eval_lingreg.report import check_convention, compare, compare_values, fmt_value
from lm_eval_lingreg.results import METRICS, Run, is_row, row_name, row_order
from lm_eval_lingreg.strict import read_number

__all__ = ["Rule", "load_rules", "apply_rules", "Verdict", "gate"]

_RULE_KEYS = {"name", "condition", "metric", "ratio_to", "min", "max", "languages", "exclude", "ci"}


def _bound(v: Any, key: str, where: str) -> float | None:
    if v is None:
        return None
    value = read_number(v, f"`{key}: {{v}}`", where, ReportError)
    if math.isnan(value):
        raise ReportError(f"{where}: `{key}` is NaN; give a number")
    return value


def _codes(v: Any, key: str, where: str) -> list[str] | None:
    if v is None or v == "all":
        return None
    items = [x.strip() for x in v.split(",")] if isinstance(v, str) else v
    if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
        raise ReportError(f"{where}: `{key}` must be a list of language codes or 'all'")
    unknown = [x for x in items if not is_row(x)]
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
    from lm_eval_lingreg.results import MEAN_RANGE, PAIR_METRICS

    pairs = metric in PAIR_METRICS
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


@dataclass
class Verdict:
    """What a gate found: each failed check in one line, how many were checked, and baseline values with no run to judge."""

    failures: list[str] = field(default_factory=list)
    checked: int = 0
    skipped: int = 0

    @property
    def passed(self) -> bool:
        return not self.failures


def gate(
    runs: Sequence[Run],
    baseline: Sequence[Mapping[str, Any]] | None = None,
    rules: Sequence[Rule] | None = None,
    rtol: float = 0.05,
    atol: float = 0.0,
    ci: float | None = None,
    strict: bool = False,
    both_ways: bool = False,
    allow_mixed: bool = False,
) -> Verdict:
    """Judge `runs` against baseline values (worse than `rtol`/`atol`, missing with `strict`, NaN; better too with
    `both_ways`) and against `rules`. A gate that checks nothing is bad input, never a pass."""
    if baseline is None and rules is None:
        raise UsageError("give a baseline and/or rules to check against")
    v = Verdict()
    for r in compare(runs, baseline, rtol=rtol, atol=atol, ci=ci, allow_mixed=allow_mixed) if baseline else []:
        if r["status"] == "missing" and not strict:
            v.skipped += 1
            continue
        v.checked += 1
        if r["status"] in ("worse", "missing", "nan") or (both_ways and r["status"] == "better"):
            v.failures.append(
                f"{r['condition']} {r['language']} {r['metric']}: {'NaN' if r['status'] == 'nan' else fmt_value(r['got'])} vs baseline {fmt_value(r['value'])} ({r['status']}"
                + (f", {r['rel']:+.1%}" if r["rel"] == r["rel"] else "")
                + ")"
            )
    for r in apply_rules(runs, rules, allow_mixed=allow_mixed) if rules else []:
        v.checked += 1
        if not r["ok"]:
            v.failures.append(f"rule '{r['rule']}': {r['run']} {r['language']} = {fmt_value(r['value'])} ({r['why']})")
    if not v.failures and not v.checked:
        raise UsageError("nothing was checked: no baseline value or rule matches these runs (check their labels with `lingreg table`)")
    return v
