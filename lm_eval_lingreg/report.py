"""Reports from lm-eval results: reading runs, leaderboard tables, baselines, regression checks, plots.

A *run* is one lm-eval results JSON (`lm_eval --output_path` writes `results_<date>.json`; the
`lingreg` commands write `<condition>/results.json`). Its label comes from what the run
recorded: the condition name of `lingreg` runs, else the mask or perturbation in
`config.lingreg`, else the model. Missing languages, NaN and inf are kept and shown as such.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lm_eval_lingreg.languages import LANGUAGES

METRICS = ("bits_per_byte", "byte_perplexity", "word_perplexity", "token_perplexity")
#: Every metric of the lingreg_ppl tasks is lower-is-better.
LOWER_IS_BETTER = dict.fromkeys(METRICS, True)
BASELINE_SCHEMA = "lm-eval-lingreg/baselines/v1"
BASELINE_FIELDS = ("source", "citation", "model", "condition", "language", "metric", "value", "kind", "note")


class ReportError(ValueError):
    """Bad input to a report command: unreadable or malformed results, baselines or rules."""


@dataclass
class Run:
    """One lm-eval results file: per-language metrics and what was evaluated."""

    path: Path
    label: str
    model: str
    values: dict[str, dict[str, float]]  # iso -> metric -> value
    info: dict[str, Any] = field(default_factory=dict)
    limit: Any = None

    def value(self, iso: str, metric: str) -> float:
        return self.values.get(iso, {}).get(metric, math.nan)


def _number(v: Any) -> float:
    if isinstance(v, bool) or v is None:
        return math.nan
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str) and v.strip().lower() in ("nan", "inf", "-inf", "infinity", "-infinity"):
        return float(v.strip().lower().replace("infinity", "inf"))
    return math.nan


def _label(data: Mapping[str, Any], path: Path) -> tuple[str, str]:
    cfg = data.get("config") or {}
    info = cfg.get("lingreg") or {}
    args = cfg.get("model_args")
    if isinstance(args, str):
        from lm_eval.utils import simple_parse_args_string

        try:
            args = simple_parse_args_string(args)
        except Exception:  # noqa: BLE001 - a label is best effort
            args = {}
    args = args if isinstance(args, dict) else {}
    model = str(info.get("pretrained") or args.get("pretrained") or cfg.get("model_name") or cfg.get("model") or "?")
    if info.get("condition"):
        return str(info["condition"]), model
    if info.get("perturbation_spec"):
        return f"perturbed {info['perturbation_spec']}", model
    if info.get("mask"):
        meta = info.get("mask_metadata") or {}
        kind = meta.get("kind")
        ratio = meta.get("ratio")
        base = Path(str(info["mask"])).name.removesuffix(".safetensors").removesuffix(".pt")
        return (f"{kind}-{ratio * 100:g}" if kind and isinstance(ratio, (int, float)) else base), model
    if info:
        return "base", model
    return Path(model).name or path.parent.name, model


def read_run(path: str | os.PathLike) -> Run:
    """One results JSON; raises `ReportError` naming the file when it is not lm-eval results."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ReportError(f"{path}: not valid JSON ({e}); a partly written file? rerun that evaluation") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise ReportError(f"{path}: not an lm-eval results file (no 'results' mapping)")
    values: dict[str, dict[str, float]] = {}
    for task, row in data["results"].items():
        if not (isinstance(task, str) and task.startswith("lingreg_ppl_") and isinstance(row, dict)):
            continue
        iso = task.removeprefix("lingreg_ppl_")
        if iso not in LANGUAGES:
            continue
        values[iso] = {m: _number(row.get(f"{m},none")) for m in METRICS if f"{m},none" in row}
    if not values:
        raise ReportError(f"{path}: no lingreg_ppl_<iso> results in it (was it run with --tasks lingreg_ppl?)")
    label, model = _label(data, path)
    cfg = data.get("config") or {}
    return Run(path, label, model, values, dict(cfg.get("lingreg") or {}), cfg.get("limit"))


def find_results(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Results files under the given files or directories (newest file per lm-eval output folder)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            found = sorted(f for f in p.rglob("*.json") if f.name == "results.json" or (f.name.startswith("results_") and f.suffix == ".json"))
            by_dir: dict[Path, Path] = {}
            for f in found:  # lm-eval writes results_<timestamp>.json; keep the newest per folder
                by_dir[f.parent] = max(by_dir.get(f.parent, f), f, key=lambda x: x.name)
            out.extend(sorted(by_dir.values()))
        else:
            raise ReportError(f"{p}: no such file or directory")
    if not out:
        raise ReportError(f"no results JSON found under {', '.join(map(str, paths))} (expected results.json or results_<date>.json)")
    return out


def load_runs(paths: Iterable[str | os.PathLike], labels: Mapping[str, str] | None = None) -> list[Run]:
    """Every run under `paths`, labels made unique (`label`, `label #2`, ...).

    `labels` maps a file or folder to the label its runs get instead of the recorded one.
    """
    paths = list(paths)
    runs = [read_run(f) for f in find_results(paths)]
    for where, label in (labels or {}).items():
        root = Path(where).resolve()
        hit = [r for r in runs if r.path.resolve() == root or root in r.path.resolve().parents]
        if not hit:
            raise ReportError(f"--label {where}={label}: no results file under {where}")
        for r in hit:
            r.label = label
    seen: dict[str, int] = {}
    for r in runs:
        seen[r.label] = seen.get(r.label, 0) + 1
        if seen[r.label] > 1:
            r.label = f"{r.label} #{seen[r.label]}"
    return runs


# tables ------------------------------------------------------------------------------------------


def geomean(values: Sequence[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return math.nan
    if any(math.isinf(v) for v in vals) or any(v <= 0 for v in vals):
        return math.inf if any(math.isinf(v) and v > 0 for v in vals) else math.nan
    return math.exp(sum(math.log(v) for v in vals) / len(vals))


def build_table(runs: Sequence[Run], metric: str = "bits_per_byte", ratio_to: str | None = None):
    """A pandas DataFrame: rows = the 30 languages + a summary row, columns = run labels.

    Absolute values, or each run divided by the run labelled `ratio_to`. The summary row is the
    arithmetic mean for absolute values (as the `lingreg_ppl` group) and the geometric mean for
    ratios; a language missing in a run is NaN there and left out of that run's summary.
    """
    import pandas as pd

    if metric not in METRICS:
        raise ReportError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    labels = [r.label for r in runs]
    base = None
    if ratio_to is not None:
        matches = [r for r in runs if r.label == ratio_to]
        if not matches:
            raise ReportError(f"--ratio-to {ratio_to!r}: no run with that label (labels: {', '.join(labels)})")
        base = matches[0]
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
        return json.dumps({c: {i: (None if math.isnan(v) else v) for i, v in df[c].items()} for c in df.columns}, indent=1, default=str).replace("Infinity", '"inf"')
    if fmt == "csv":
        return df.to_csv(float_format="%.6g", na_rep="missing")
    cells = [[i, *(fmt_value(v) for v in row)] for i, row in zip(df.index, df.itertuples(index=False), strict=True)]
    headers = [df.index.name or "", *df.columns]
    table_fmt = {"markdown": "github", "latex": "latex_booktabs", "html": "html"}.get(fmt)
    if table_fmt is None:
        raise ReportError(f"unknown format {fmt!r}; choose markdown, csv, latex, html or json")
    return tabulate(cells, headers=headers, tablefmt=table_fmt, disable_numparse=True)


# baselines --------------------------------------------------------------------------------------


def load_baseline(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Entries of a baseline file (JSON with `schema` and `values`, or CSV with the same columns)."""
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"baseline file {path} not found (shipped ones are in baselines/)")
    if path.suffix.lower() == ".csv":
        import csv

        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    else:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ReportError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(data, dict) or data.get("schema") != BASELINE_SCHEMA or not isinstance(data.get("values"), list):
            raise ReportError(f"{path}: expected a JSON object with \"schema\": \"{BASELINE_SCHEMA}\" and a \"values\" list (see baselines/README.md)")
        rows = data["values"]
    out = []
    for i, row in enumerate(rows):
        missing = [k for k in ("source", "model", "condition", "language", "metric", "value") if row.get(k) in (None, "")]
        if missing:
            raise ReportError(f"{path}: entry {i} lacks {', '.join(missing)} (every value needs its provenance)")
        if row["metric"] not in METRICS and row["metric"] != "perplexity":
            raise ReportError(f"{path}: entry {i}: unknown metric {row['metric']!r}")
        v = row["value"]
        try:
            value = float(v) if isinstance(v, str) else _number(v)
        except ValueError:
            raise ReportError(f"{path}: entry {i}: value {v!r} is not a number") from None
        out.append({k: row.get(k) for k in BASELINE_FIELDS} | {"value": value})
    return out


def baseline_from_runs(runs: Sequence[Run], source: str, model: str, metric: str = "token_perplexity", note: str = "") -> dict[str, Any]:
    """A baseline file's content from runs of this tool (one entry per condition x language)."""
    values = []
    for r in runs:
        for iso in LANGUAGES:
            v = r.value(iso, metric)
            if iso in r.values:
                values.append({"source": source, "citation": "", "model": model, "condition": r.label, "language": iso, "metric": metric,
                               "value": None if math.isnan(v) else (str(v) if math.isinf(v) else v), "kind": "measured", "note": note or f"limit={r.limit}"})
    return {"schema": BASELINE_SCHEMA, "values": values}


def compare(runs: Sequence[Run], baseline: Sequence[Mapping[str, Any]], rtol: float = 0.05, atol: float = 0.0) -> list[dict[str, Any]]:
    """Each baseline value matched to a run (by condition label) and language; with deltas and a verdict."""
    by_label = {r.label: r for r in runs}
    rows = []
    for b in baseline:
        run = by_label.get(str(b["condition"]))
        metric = b["metric"] if b["metric"] in METRICS else "token_perplexity"  # a paper's own perplexity: closest is per token
        got = run.value(b["language"], metric) if run else math.nan
        want = b["value"]
        if run is None or math.isnan(got):
            status = "missing"
        elif math.isnan(want):
            status = "no baseline value"
        elif math.isinf(want) or math.isinf(got):
            status = "ok" if got == want else ("worse" if got > want else "better")
        else:
            tol = atol + rtol * abs(want)
            status = "ok" if abs(got - want) <= tol else ("worse" if (got > want) == LOWER_IS_BETTER[metric] else "better")
        rows.append({**b, "compared_metric": metric, "got": got, "delta": got - want if not (math.isnan(got) or math.isnan(want)) else math.nan,
                     "rel": (got / want - 1) if want and not (math.isnan(got) or math.isnan(want) or math.isinf(want)) else math.nan, "status": status})
    return rows


# checks -----------------------------------------------------------------------------------------


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
        unknown = set(d) - {"name", "condition", "metric", "ratio_to", "min", "max", "languages", "exclude"}
        if unknown:
            raise ReportError(f"{where}: unknown rule key(s) {', '.join(sorted(unknown))}")
        if "condition" not in d or (d.get("min") is None and d.get("max") is None):
            raise ReportError(f"{where}: a rule needs `condition` and at least one of `min`/`max`")
        langs = d.get("languages")
        if isinstance(langs, str):
            langs = None if langs == "all" else [x.strip() for x in langs.split(",")]
        if d.get("metric", "token_perplexity") not in METRICS:
            raise ReportError(f"{where}: unknown metric {d.get('metric')!r}")
        return cls(str(d.get("name") or d["condition"]), str(d["condition"]), d.get("metric", "token_perplexity"), d.get("ratio_to"),
                   None if d.get("min") is None else float(d["min"]), None if d.get("max") is None else float(d["max"]), langs,
                   tuple(d.get("exclude") or ()))


def load_rules(path: str | os.PathLike) -> list[Rule]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ReportError(f"rules file {path} not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ReportError(f"{path}: not valid YAML ({e})") from None
    items = data.get("rules") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise ReportError(f"{path}: expected a `rules:` list")
    return [Rule.from_dict(d, f"{path} rule {i + 1}") if isinstance(d, dict) else _bad_rule(path, i) for i, d in enumerate(items)]


def _bad_rule(path: Path, i: int):
    raise ReportError(f"{path} rule {i + 1}: expected a mapping")


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
            out.append({"rule": rule.name, "run": rule.ratio_to, "language": "-", "value": math.nan, "ok": False, "why": f"no run labelled {rule.ratio_to!r} to divide by"})
            continue
        for run in matched:
            langs = [iso for iso in (rule.languages or [iso for iso in LANGUAGES if iso in run.values]) if iso not in rule.exclude]
            for iso in langs:
                v = run.value(iso, rule.metric)
                if base is not None:
                    b = base.value(iso, rule.metric)
                    v = v / b if not math.isnan(b) and b else math.nan
                if math.isnan(v):
                    ok, why = False, "missing or NaN"
                else:
                    ok = (rule.min is None or v >= rule.min) and (rule.max is None or v <= rule.max)
                    why = "" if ok else (f"below min {rule.min:g}" if rule.min is not None and v < rule.min else f"above max {rule.max:g}")
                out.append({"rule": rule.name, "run": run.label, "language": iso, "value": v, "ok": ok, "why": why})
    return out


# plots ------------------------------------------------------------------------------------------


def plot_heatmap(runs: Sequence[Run], path: str | os.PathLike, metric: str = "token_perplexity", ratio_to: str = "base") -> None:
    """Languages x conditions, log10 of the ratio to the base run (PNG or SVG by suffix)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from lm_eval_lingreg._atomic import save_figure

    df = build_table(runs, metric, ratio_to).drop(index="Geometric mean")
    df = df[[c for c in df.columns if c != ratio_to]]
    with np.errstate(divide="ignore", invalid="ignore"):
        data = np.log10(df.to_numpy(dtype=float))
    finite = data[np.isfinite(data)]
    vmax = float(np.max(np.abs(finite))) if finite.size else 1.0
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(df.columns), 0.32 * len(df.index) + 2))
    im = ax.imshow(np.clip(np.nan_to_num(data, nan=np.nan, posinf=vmax, neginf=-vmax), -vmax, vmax), aspect="auto", cmap="RdBu_r", vmin=-vmax, vmax=vmax)
    ax.set_xticks(range(len(df.columns)), df.columns, rotation=45, ha="right")
    ax.set_yticks(range(len(df.index)), df.index, fontsize=8)
    for (i, j), v in np.ndenumerate(data):
        if not np.isfinite(v):
            ax.text(j, i, "inf" if v > 0 else "n/a", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, label=f"log10({metric} / {ratio_to})")
    ax.set_title(f"{metric}: ratio to {ratio_to}")
    fig.tight_layout()
    save_figure(fig, path)


def plot_region_density(region: Any, path: str | os.PathLike) -> None:
    """Share of each (layer, module) tensor that the region selects, as a heatmap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from lm_eval_lingreg._atomic import save_figure
    from lm_eval_lingreg.regions import summarize

    rows = [r for r in summarize(region) if r["layer"] is not None]
    if not rows:
        raise ReportError("the region has no per-layer tensors to plot")
    layers = sorted({r["layer"] for r in rows})
    modules = list(dict.fromkeys(r["module"] for r in rows))
    grid = np.full((len(layers), len(modules)), np.nan)
    for r in rows:
        grid[layers.index(r["layer"]), modules.index(r["module"])] = 100 * r["share"]
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(modules), 0.3 * len(layers) + 2))
    im = ax.imshow(grid, aspect="auto", cmap="magma")
    ax.set_xticks(range(len(modules)), modules, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(layers)), layers)
    ax.set_ylabel("layer")
    fig.colorbar(im, ax=ax, label="% of the tensor selected")
    ax.set_title(str(region.metadata.get("kind") or "region") + f" ({region.num_selected:,} entries)")
    fig.tight_layout()
    save_figure(fig, path)
