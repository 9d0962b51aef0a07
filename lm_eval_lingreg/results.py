"""Reading evaluation results: runs, per-language metrics, and the one geometric mean.

A *run* is one lm-eval results JSON (`lm_eval --output_path` writes `results_<date>.json`; the
`lingreg` commands write `<condition>/results.json`). Its label comes from what the run
recorded: the condition name of `lingreg` runs, else the mask or perturbation in
`config.lingreg`, else the model. Missing languages, NaN and inf are kept and shown as such.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lm_eval_lingreg.errors import ReportError
from lm_eval_lingreg.languages import LANGUAGES

METRICS = ("bits_per_byte", "byte_perplexity", "word_perplexity", "token_perplexity")
#: Every metric of the lingreg_ppl tasks is lower-is-better.
LOWER_IS_BETTER = dict.fromkeys(METRICS, True)


def task_name(iso: str) -> str:
    return f"lingreg_ppl_{iso}"


def geomean(values: Iterable[float]) -> float:
    """Geometric mean of positive values, NaN left out; inf if any is inf; NaN if none is left or any is <= 0."""
    vals = [float(v) for v in values if not math.isnan(v)]
    if not vals or any(v <= 0 for v in vals):
        return math.nan
    if any(math.isinf(v) for v in vals):
        return math.inf
    return math.exp(sum(math.log(v) for v in vals) / len(vals))


def safe_exp(x: float) -> float:
    """exp(x), inf past the float range, NaN for NaN."""
    if math.isnan(x):
        return math.nan
    return math.exp(x) if x < 709 else math.inf


def per_language(results: Mapping[str, Any], metric: str) -> dict[str, float]:
    """{iso: value} of one metric from an lm-eval results dict (NaN where absent)."""
    table = results.get("results", {})
    values = {}
    for iso in LANGUAGES:
        row = table.get(task_name(iso))
        if row is None:
            continue
        value = row.get(f"{metric},none")
        values[iso] = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else number(value)
    return values


def number(v: Any) -> float:
    """A metric value as a float: numbers as they are, 'inf'/'nan' strings, anything else NaN."""
    if isinstance(v, bool) or v is None:
        return math.nan
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str) and v.strip().lower() in ("nan", "inf", "-inf", "infinity", "-infinity"):
        return float(v.strip().lower().replace("infinity", "inf"))
    return math.nan


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


def _label(cfg: Mapping[str, Any], info: Mapping[str, Any], path: Path) -> tuple[str, str]:
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
        kind = meta.get("kind") if isinstance(meta, dict) else None
        ratio = meta.get("ratio") if isinstance(meta, dict) else None
        base = Path(str(info["mask"])).name.removesuffix(".safetensors").removesuffix(".pt")
        return (f"{kind}-{ratio * 100:g}" if kind and isinstance(ratio, (int, float)) and not isinstance(ratio, bool) else base), model
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
    except IsADirectoryError:
        raise ReportError(f"{path}: is a folder, not a results file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ReportError(f"{path}: not valid JSON ({e}); a partly written file? rerun that evaluation") from None
    except RecursionError:
        raise ReportError(f"{path}: JSON nested too deeply; not an lm-eval results file") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise ReportError(f"{path}: not an lm-eval results file (no 'results' mapping)")
    cfg = data.get("config") or {}
    if not isinstance(cfg, dict):
        raise ReportError(f"{path}: 'config' must be a JSON object, got {type(cfg).__name__}; not an lm-eval results file")
    info = cfg.get("lingreg") or {}
    if not isinstance(info, dict):
        raise ReportError(f"{path}: 'config.lingreg' must be a JSON object, got {type(info).__name__}")
    values: dict[str, dict[str, float]] = {}
    for task, row in data["results"].items():
        if not (isinstance(task, str) and task.startswith("lingreg_ppl_") and isinstance(row, dict)):
            continue
        iso = task.removeprefix("lingreg_ppl_")
        if iso not in LANGUAGES:
            continue
        values[iso] = {m: number(row.get(f"{m},none")) for m in METRICS if f"{m},none" in row}
        negative = [m for m, v in values[iso].items() if v < 0]
        if negative:
            raise ReportError(
                f"{path}: {task} has a negative {negative[0]} ({values[iso][negative[0]]:g}); perplexities are >= 1 and bits per byte >= 0, so the file is corrupt"
            )
    if not values:
        raise ReportError(f"{path}: no lingreg_ppl_<iso> results in it (was it run with --tasks lingreg_ppl?)")
    label, model = _label(cfg, info, path)
    return Run(path, label, model, values, dict(info), cfg.get("limit"))


def find_results(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Results files under the given files or directories (newest file per lm-eval output folder)."""
    paths = list(paths)
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


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ReportError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    return metric


def run_by_label(runs: Sequence[Run], label: str, what: str = "--ratio-to") -> Run:
    for r in runs:
        if r.label == label:
            return r
    raise ReportError(f"{what} {label!r}: no run with that label (labels: {', '.join(r.label for r in runs)})")
