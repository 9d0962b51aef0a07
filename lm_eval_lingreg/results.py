"""Reading evaluation results: runs, per-language metrics, and the one geometric mean.

A *run* is one lm-eval results JSON (`lm_eval --output_path` writes `results_<date>.json`; the
`lingreg` commands write `<condition>/results.json`). Its label comes from what the run
recorded: the condition name of `lingreg` runs, else the mask or perturbation in
`config.lingreg`, else the model. Missing languages, NaN and inf are kept and shown as such.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lm_eval_lingreg.errors import ReportError
from lm_eval_lingreg.languages import LANGUAGES

__all__ = [
    "PPL_METRICS",
    "GEN_METRICS",
    "MT_METRICS",
    "STEER_METRICS",
    "PAIR_METRICS",
    "OUTPUT_KINDS",
    "MEAN_METRICS",
    "METRICS",
    "MEAN_RANGE",
    "MAX_RESULTS_BYTES",
    "LOWER_IS_BETTER",
    "ITEMS",
    "KIND_METRICS",
    "task_name",
    "geomean",
    "safe_exp",
    "per_language",
    "number",
    "DOCUMENTS",
    "documents",
    "items",
    "Items",
    "SIZES",
    "Documents",
    "Run",
    "read_run",
    "find_results",
    "load_runs",
    "is_row",
    "row_order",
    "row_name",
    "check_metric",
    "run_by_label",
]

PPL_METRICS = ("bits_per_byte", "byte_perplexity", "word_perplexity", "token_perplexity")
#: Metrics of the generation tasks (`lingreg_gen_<iso>`): shares of outputs (0-1) and mean sentence chrF (0-100).
GEN_METRICS = ("lang_fidelity", "line_pass", "word_pass", "chrf")
#: Metrics of the translation tasks (`lingreg_mt_<src>_<tgt>`).
MT_METRICS = ("mt_chrf", "mt_fidelity")
#: Metrics of the steering tasks (`lingreg_steer_<src>_<tgt>`): share in the wanted language, chrF against its text, both.
STEER_METRICS = ("steer_success", "steer_chrf", "steer_score")
#: Metrics reported per pair of languages (SRC-TGT rows).
PAIR_METRICS = MT_METRICS + STEER_METRICS
#: Means over outputs, higher is better: `--ratio-to` gives differences (run - base), not ratios.
MEAN_METRICS = GEN_METRICS + MT_METRICS + STEER_METRICS
METRICS = PPL_METRICS + MEAN_METRICS
#: The largest value each mean metric can take.
MEAN_RANGE = {m: 100.0 if m.endswith(("chrf", "score")) else 1.0 for m in MEAN_METRICS}
#: Results files larger than this are refused (a full 30-language run with per-document scores is a few MB).
MAX_RESULTS_BYTES = 2 * 10**9
#: Every metric of the lingreg_ppl tasks is lower-is-better; every other one higher-is-better.
LOWER_IS_BETTER = dict.fromkeys(PPL_METRICS, True) | dict.fromkeys(MEAN_METRICS, False)
#: Per-sample values of the generation and translation tasks in the results JSON that lingreg commands write.
ITEMS = "lingreg_items"
#: What each kind of task reports.
KIND_METRICS = {"ppl": PPL_METRICS, "gen": GEN_METRICS, "mt": MT_METRICS, "steer": STEER_METRICS}
#: Kinds of task whose outputs are judged one by one (per-output values, intervals).
OUTPUT_KINDS = ("gen", "mt", "steer")


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
        except OverflowError as exc:
            raise ValueError(f"{str(v)[:20]}... is not a number a metric can have (too large for a float)") from exc
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


def items(samples: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, dict[str, list]]:
    """Per generation/translation task, each output's metric values, detected language and text, from lm-eval's logged samples."""
    from lm_eval_lingreg.language_tasks import task_kind

    out = {}
    for task, rows in samples.items():
        kind = task_kind(task)
        if kind not in OUTPUT_KINDS:
            continue
        rows = sorted(rows, key=lambda r: _whole(r["doc_id"], "doc_id"))
        table: dict[str, list] = {"doc_id": [_whole(r["doc_id"], "doc_id") for r in rows]}
        if len(set(table["doc_id"])) != len(rows):
            raise ValueError(f"{task}: a doc_id appears twice")
        for m in KIND_METRICS[kind]:
            table[m] = [_item_value(r[m], m) for r in rows]
        table["detected_lang"] = [str(r.get("detected_lang", "")) for r in rows]
        table["detected_confidence"] = [float(r.get("detected_confidence", math.nan)) for r in rows]
        table["output"] = [str((r.get("filtered_resps") or [""])[0]) for r in rows]
        out[task] = table
    return out


def _whole(v: Any, what: str) -> int:
    """A whole non-negative number exactly as written: 1.7 is not truncated to 1, "3" and true are not numbers."""
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"{what} {repr(v)[:40]} is not a whole number of 0 or more")
    return v


def _real(v: Any, what: str) -> float:
    """A number as written (not a string, not a boolean, not NaN)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
        raise ValueError(f"{what} {repr(v)[:40]} is not a number")
    try:
        return float(v)
    except OverflowError as e:  # an integer of 100 digits
        raise ValueError(f"{what} {str(v)[:20]!r}... is beyond the range of a float") from e


def _limit(v: Any, path: Path) -> int | float | None:
    """lm-eval's `config.limit`: none, a whole number of documents (2 or 2.0) or a fraction below 1."""
    if v is None:
        return None
    ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 and (v < 1 or float(v).is_integer())
    if not ok:
        raise ReportError(f"{path}: config.limit {repr(v)[:40]} is not a number of documents (a whole number, or a fraction below 1); the file is corrupt")
    return v


def _item_value(v: Any, metric: str) -> float:
    """One output's value of a mean metric: a real number in the metric's range (not a string, not a boolean, not NaN)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= MEAN_RANGE[metric]:
        raise ValueError(f"{metric} value {str(v)[:20]!r} is not a number in 0-{MEAN_RANGE[metric]:g}")
    return float(v)


@dataclass
class Items:
    """Per-output values of one task (a language, or a translation pair) in one run (what the bootstrap resamples)."""

    doc_id: list[int]
    values: dict[str, list[float]]  # metric -> one value per output


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
    items: dict[str, Items] = field(default_factory=dict)  # row -> per-output values of generation/translation tasks

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
    from lm_eval_lingreg.strict import loads_json, read_text

    if not path.exists():
        raise ReportError(f"{path}: no such file")
    if path.is_dir():
        raise ReportError(f"{path}: is a folder, not a results file")
    text = read_text(path, ReportError, "results file", max_bytes=MAX_RESULTS_BYTES)
    data = loads_json(text, ReportError, str(path), hint="; a partly written file? rerun that evaluation")
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise ReportError(f"{path}: not an lm-eval results file (no 'results' mapping)")
    cfg = data.get("config") or {}
    if not isinstance(cfg, dict):
        raise ReportError(f"{path}: 'config' must be a JSON object, got {type(cfg).__name__}; not an lm-eval results file")
    info = cfg.get("lingreg") or {}
    if not isinstance(info, dict):
        raise ReportError(f"{path}: 'config.lingreg' must be a JSON object, got {type(info).__name__}")
    values = _values(data["results"], path)
    if not values:
        raise ReportError(f"{path}: no lingreg_ppl_<iso> results (nor lingreg_gen_<iso>, lingreg_mt_<src>_<tgt>) in it; was it run with --tasks lingreg_ppl?")
    label, model = _label(cfg, info, path)
    return Run(path, label, model, values, dict(info), _limit(cfg.get("limit"), path), _documents(data, path), _items(data, path, values))


def _values(results: Mapping[str, Any], path: Path) -> dict[str, dict[str, float]]:
    """{row: {metric: value}} of this package's tasks: a language, or a translation pair `src-tgt`."""
    from lm_eval_lingreg.language_tasks import task_kind, task_row

    values: dict[str, dict[str, float]] = {}
    for task, row in results.items():
        kind = task_kind(task) if isinstance(task, str) else None
        if kind is None:
            continue
        if not isinstance(row, dict):
            raise ReportError(f"{path}: results of {task} must be a JSON object, got {type(row).__name__}")
        try:
            got = {m: number(row.get(f"{m},none")) for m in KIND_METRICS[kind] if f"{m},none" in row}
        except (ValueError, OverflowError) as e:
            raise ReportError(f"{path}: {task}: a metric value {e}; the file is corrupt") from e
        for m, v in got.items():
            if kind == "ppl" and v < (0 if m == "bits_per_byte" else 1 - 1e-9):
                raise ReportError(f"{path}: {task} has {m} {v:g}; perplexities are >= 1 and bits per byte >= 0, so the file is corrupt; rerun the evaluation")
            if kind != "ppl" and not math.isnan(v) and not (0 <= v <= MEAN_RANGE[m]):
                raise ReportError(f"{path}: {task} has {m} {v:g}, outside 0-{MEAN_RANGE[m]:g}; the file is corrupt; rerun the evaluation")
        if kind == "steer" and _steer_impossible(got):
            raise ReportError(
                f"{path}: {task} has steer_score {got['steer_score']:g} with steer_chrf {got.get('steer_chrf', math.nan):g} and steer_success "
                f"{got.get('steer_success', math.nan):g}; steer_score is the chrF of outputs in the wanted language, never above steer_chrf and 0 "
                "when none is, so the file is corrupt; rerun the evaluation"
            )
        values.setdefault(task_row(task), {}).update(got)
    return values


def _steer_impossible(got: Mapping[str, float]) -> bool:
    """steer_score above steer_chrf, or above 0 with no output in the wanted language."""
    score = got.get("steer_score", math.nan)
    if math.isnan(score):
        return False
    chrf, success = got.get("steer_chrf", math.nan), got.get("steer_success", math.nan)
    return (not math.isnan(chrf) and score > chrf + 1e-9) or (success == 0 and score > 0)


def _items(data: Mapping[str, Any], path: Path, values: Mapping[str, Mapping[str, float]] | None = None) -> dict[str, Items]:
    """Per-output values of the generation/translation tasks: from lingreg commands' results JSON, or `--log_samples` files beside it.

    Each task's values must average to what its results say: intervals drawn from other numbers than the table's would mislead.
    """
    from lm_eval_lingreg.language_tasks import task_kind, task_row

    tables = data.get(ITEMS)
    if tables is None:
        tables = _samples_files(path, OUTPUT_KINDS, items)
    out: dict[str, Items] = {}
    try:
        for task, t in (tables or {}).items():
            kind = task_kind(task)
            if kind not in OUTPUT_KINDS:
                continue
            doc_id = [_whole(x, "doc_id") for x in t["doc_id"]]
            if not doc_id or len(set(doc_id)) != len(doc_id):
                raise ValueError(f"{task}: no outputs" if not doc_id else f"{task}: a doc_id appears twice")
            vals = {m: [_item_value(x, m) for x in t[m]] for m in KIND_METRICS[kind] if m in t}
            if any(len(v) != len(doc_id) for v in vals.values()):
                raise ValueError(f"{task}: as many values as outputs needed")
            row = task_row(task)
            for m, v in vals.items():
                want = (values or {}).get(row, {}).get(m)
                if want is not None and not math.isnan(want) and not math.isclose(sum(v) / len(v), want, rel_tol=1e-6, abs_tol=1e-9):
                    raise ValueError(f"{task}: the per-output {m} values average {sum(v) / len(v):.6g}, but the results say {want:.6g}")
            if row in out:
                out[row].values.update(vals)
            else:
                out[row] = Items(doc_id, vals)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ReportError(f"{path}: malformed per-output values ({ITEMS}): {e}; rerun that evaluation") from e
    return out


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
                sizes = {k: [_whole(x, f"{task}: {k}") for x in t[k]] for k in ("tokens", "bytes", "words") if k in t}
                docs = Documents([_whole(x, f"{task}: doc_id") for x in t["doc_id"]], [_real(x, f"{task}: loglikelihood") for x in t["loglikelihood"]], sizes)
                if any(len(v) != len(docs.doc_id) for v in (docs.loglikelihood, *sizes.values())):
                    raise ValueError(f"{task}: doc_id, loglikelihood and sizes have different lengths")
                out[iso] = docs
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ReportError(f"{path}: malformed per-document scores ({DOCUMENTS}): {str(exc)[:200]}; rerun that evaluation") from exc
    return out


def _from_samples_files(path: Path) -> dict[str, dict[str, list]] | None:
    return _samples_files(path, ("ppl",), documents)


def _samples_files(path: Path, kinds: Sequence[str], table: Any) -> dict[str, dict[str, list]] | None:
    """`lm_eval --log_samples` writes samples_<task>_<time>.jsonl next to results_<time>.json."""
    from lm_eval_lingreg.strict import loads_json, read_text

    stamp = path.stem.removeprefix("results_") if path.stem.startswith("results_") else None
    if stamp is None:
        return None
    tables: dict[str, dict[str, list]] = {}
    for kind in kinds:
        for f in sorted(path.parent.glob(f"samples_lingreg_{kind}_*_{stamp}.jsonl")):
            if not f.is_file():
                raise ReportError(f"{f}: not a regular file (a pipe, device or broken link?); remove it from the results folder")
            task = f.name.removeprefix("samples_").removesuffix(f"_{stamp}.jsonl")
            rows = []
            text = read_text(f, ReportError, "samples file", max_bytes=MAX_RESULTS_BYTES)
            for n, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    rows.append(loads_json(line, ReportError, f"{f} line {n}", hint="; not valid JSON lines: a partly written file?"))
            if not rows:
                raise ReportError(f"{f}: no samples in it; a partly written file? rerun that evaluation")
            try:
                tables.update(table({task: rows}))
            except (KeyError, TypeError, IndexError, ValueError) as e:
                raise ReportError(f"{f}: not lm-eval samples of a lingreg_{kind} task ({type(e).__name__}: {str(e)[:120]})") from e
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
        elif p.exists():
            raise ReportError(f"{p}: not a regular file (a pipe, socket or device?); give a results JSON file or a folder of them")
        elif p.is_symlink():
            raise ReportError(f"{p}: a broken or looping link; give a results JSON file or a folder of them")
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


def is_row(code: str) -> bool:
    """A language code, or a translation pair SRC-TGT of two different ones."""
    src, sep, tgt = code.partition("-")
    return code in LANGUAGES if not sep else src in LANGUAGES and tgt in LANGUAGES and src != tgt


def row_order(rows: Iterable[str]) -> list[str]:
    """Rows in table order: the languages as in `LANGUAGES`, then translation pairs by source, then target."""
    order = {iso: i for i, iso in enumerate(LANGUAGES)}

    def key(row: str) -> tuple:
        src, _, tgt = row.partition("-")
        return (bool(tgt), order.get(src, len(order)), order.get(tgt, -1), row)

    return sorted(set(rows), key=key)


def row_name(row: str) -> str:
    """'Chinese (zh)', or 'English to Chinese (en-zh)' for a translation pair."""
    src, _, tgt = row.partition("-")
    if tgt:
        return f"{LANGUAGES[src].name} to {LANGUAGES[tgt].name} ({row})"
    return f"{LANGUAGES[row].name} ({row})"


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ReportError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    return metric


def run_by_label(runs: Sequence[Run], label: str, what: str = "--ratio-to") -> Run:
    for r in runs:
        if r.label == label:
            return r
    raise ReportError(f"{what} {label!r}: no run with that label (labels: {', '.join(r.label for r in runs)})")
