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
#: Results files larger than this are refused (a full 30-language run with per-document scores is a few MB).
MAX_RESULTS_BYTES = 2 * 10**9
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
        try:
            values[iso] = number(row.get(f"{metric},none"))
        except (ValueError, OverflowError):
            values[iso] = math.nan
    return values


def number(v: Any) -> float:
    """A metric value as a float: numbers as they are, 'inf'/'nan' strings, null as NaN (not computed);
    anything else raises ValueError (garbage must not pass for a missing value)."""
    if v is None:
        return math.nan
    if isinstance(v, bool):
        raise ValueError(f"{v!r} is not a number")
    if isinstance(v, (int, float)):
        try:
            return float(v)
        except OverflowError:
            raise ValueError(f"{str(v)[:20]}... is not a number a metric can have (too large for a float)") from None
    if isinstance(v, str) and v.strip().lower() in ("nan", "inf", "-inf", "infinity", "-infinity"):
        return float(v.strip().lower().replace("infinity", "inf"))
    raise ValueError(f"{str(v)[:40]!r} is not a number")


#: Key of the per-document scores in the results JSON that lingreg commands write.
DOCUMENTS = "lingreg_documents"


def documents(samples: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, dict[str, list]]:
    """Per task, the per-document log-likelihoods and sizes from lm-eval's logged samples, compactly."""
    out = {}
    for task, rows in samples.items():
        if not task.startswith("lingreg_ppl_"):
            continue
        rows = sorted(rows, key=lambda r: r["doc_id"])
        out[task] = {
            "doc_id": [int(r["doc_id"]) for r in rows],
            "loglikelihood": [float(r["bits_per_byte"][0]) for r in rows],
            "bytes": [int(r["bits_per_byte"][1]) for r in rows],
            "words": [int(r["word_perplexity"][1]) for r in rows],
            **({"tokens": [int(r["token_perplexity"][1]) for r in rows]} if all("token_perplexity" in r for r in rows) else {}),
        }
    return out


#: Per-document counts each metric divides the summed log-likelihood by.
SIZES = {"token_perplexity": "tokens", "bits_per_byte": "bytes", "byte_perplexity": "bytes", "word_perplexity": "words"}


@dataclass
class Documents:
    """Per-document log-likelihoods and sizes of one language in one run (what the bootstrap resamples)."""

    doc_id: list[int]
    loglikelihood: list[float]
    sizes: dict[str, list[int]]  # "bytes", "words" and, from lingreg wrappers, "tokens"

    def has(self, metric: str) -> bool:
        return SIZES[metric] in self.sizes


@dataclass
class Run:
    """One lm-eval results file: per-language metrics and what was evaluated."""

    path: Path
    label: str
    model: str
    values: dict[str, dict[str, float]]  # iso -> metric -> value
    info: dict[str, Any] = field(default_factory=dict)
    limit: Any = None
    documents: dict[str, Documents] = field(default_factory=dict)  # iso -> per-document scores, when recorded

    def value(self, iso: str, metric: str) -> float:
        return self.values.get(iso, {}).get(metric, math.nan)

    @property
    def convention(self) -> str:
        """How BOS was treated: `context` (the document's own tokens), `score`, or `lm-eval` (plain hf or older runs: lm-eval's own)."""
        return str(self.info.get("rolling_bos") or "lm-eval")


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
        plausible = isinstance(ratio, float | int) and not isinstance(ratio, bool) and 0 < ratio <= 1
        return (f"{kind}-{ratio * 100:g}" if kind and plausible else base), model
    if info:
        return "base", model
    return Path(model).name or path.parent.name, model


def read_run(path: str | os.PathLike) -> Run:
    """One results JSON; raises `ReportError` naming the file when it is not lm-eval results."""
    path = Path(path)
    if path.exists() and not path.is_dir() and not path.is_file():
        raise ReportError(f"{path}: not a regular file (a pipe or device?)")
    if path.is_file() and path.stat().st_size > MAX_RESULTS_BYTES:
        raise ReportError(f"{path}: {path.stat().st_size / 1e9:.3g} GB is too large for a results file (at most {MAX_RESULTS_BYTES / 1e9:g} GB)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ReportError(f"{path}: is a folder, not a results file") from None
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as e:
        raise ReportError(f"{path}: not valid JSON ({str(e)[:120]}); a partly written file? rerun that evaluation") from None
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
        if not (isinstance(task, str) and task.startswith("lingreg_ppl_")) or task.removeprefix("lingreg_ppl_") not in LANGUAGES:
            continue
        iso = task.removeprefix("lingreg_ppl_")
        if not isinstance(row, dict):
            raise ReportError(f"{path}: results of {task} must be a JSON object, got {type(row).__name__}")
        try:
            values[iso] = {m: number(row.get(f"{m},none")) for m in METRICS if f"{m},none" in row}
        except (ValueError, OverflowError) as e:
            raise ReportError(f"{path}: {task}: a metric value {e}; the file is corrupt") from None
        impossible = [m for m, v in values[iso].items() if v < (0 if m == "bits_per_byte" else 1 - 1e-9)]
        if impossible:
            m = impossible[0]
            raise ReportError(
                f"{path}: {task} has {m} {values[iso][m]:g}; perplexities are >= 1 and bits per byte >= 0, so the file is corrupt; rerun the evaluation"
            )
    if not values:
        raise ReportError(f"{path}: no lingreg_ppl_<iso> results in it (was it run with --tasks lingreg_ppl?)")
    label, model = _label(cfg, info, path)
    return Run(path, label, model, values, dict(info), cfg.get("limit"), _documents(data, path))


def _documents(data: Mapping[str, Any], path: Path) -> dict[str, Documents]:
    """Per-document scores: written by lingreg commands into the results JSON, or by `lm_eval --log_samples` beside it."""
    tables = data.get(DOCUMENTS)
    if tables is None:
        tables = _from_samples_files(path)
    out = {}
    try:
        for task, t in (tables or {}).items():
            iso = task.removeprefix("lingreg_ppl_")
            if iso in LANGUAGES:
                sizes = {k: [int(x) for x in t[k]] for k in ("tokens", "bytes", "words") if k in t}
                docs = Documents([int(x) for x in t["doc_id"]], [float(x) for x in t["loglikelihood"]], sizes)
                if any(len(v) != len(docs.doc_id) for v in (docs.loglikelihood, *sizes.values())):
                    raise ValueError("lengths differ")
                out[iso] = docs
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ReportError(f"{path}: malformed per-document scores ({DOCUMENTS}); rerun that evaluation") from None
    return out


def _from_samples_files(path: Path) -> dict[str, dict[str, list]] | None:
    """`lm_eval --log_samples` writes samples_<task>_<time>.jsonl next to results_<time>.json."""
    stamp = path.stem.removeprefix("results_") if path.stem.startswith("results_") else None
    if stamp is None:
        return None
    tables: dict[str, dict[str, list]] = {}
    for f in path.parent.glob(f"samples_lingreg_ppl_*_{stamp}.jsonl"):
        task = f.name.removeprefix("samples_").removesuffix(f"_{stamp}.jsonl")
        rows = []
        for line in f.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise ReportError(f"{f}: not valid JSON lines; a partly written file?") from None
        try:
            tables.update(documents({task: rows}))
        except (KeyError, TypeError, IndexError):
            raise ReportError(f"{f}: not lm-eval samples of a lingreg_ppl task") from None
    return tables or None


def find_results(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Results files under the given files or directories (newest file per lm-eval output folder)."""
    paths = list(paths)
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            found = sorted(f for f in p.rglob("*.json") if f.name == "results.json" or (f.name.startswith("results_") and f.suffix == ".json"))
            special = [f for f in found if not f.is_file()]
            if special:
                raise ReportError(f"{special[0]}: not a regular file (a pipe, device or broken link?); remove it from the results folder")
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
