"""Evaluate several conditions (regions, perturbations) on one loaded model through lm-eval, in process.

Loading the model and building the tasks dominate a run on small models, so each
condition is applied to the same model, evaluated, then restored exactly.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from lm_eval_lingreg import progress
from lm_eval_lingreg.errors import UsageError
from lm_eval_lingreg.interventions import perturb
from lm_eval_lingreg.outputs import check_writable, write_json
from lm_eval_lingreg.perturbation import Perturbation
from lm_eval_lingreg.regions import Region, apply
from lm_eval_lingreg.results import DOCUMENTS, ITEMS, documents, items, task_name

__all__ = [
    "Condition",
    "DEFAULT_LIMIT",
    "UDHR_DOCUMENTS",
    "documents_read",
    "task_names",
    "task_manager",
    "check_labels",
    "evaluate_conditions",
    "ratio_table",
    "demo",
]

Condition = Region | Sequence[Perturbation] | None
#: UDHR documents per language read by default (main job, regions experiment); docs/EVALUATION.md says why.
DEFAULT_LIMIT = 8
#: UDHR documents per language: the preamble (document 0) and the 30 articles.
UDHR_DOCUMENTS = 31


def documents_read(limit: int | None, first: int = 0, what: str = "UDHR documents") -> str:
    """How many documents per language, and which when not from the preamble (for pages and notes)."""
    n = limit or UDHR_DOCUMENTS - first
    which = f"article {first}" if n == 1 else f"articles {first}-{first + n - 1}"
    return f"{n} {what.removesuffix('s') if n == 1 else what} per language" + (f" ({which}; the preamble left out)" if first else "")


def task_names(langs: Sequence[str]) -> list[str]:
    return [task_name(iso) for iso in langs]


@functools.cache
def task_manager() -> Any:
    """An lm-eval TaskManager that indexes only this package's tasks: 0.02 s instead of ~10 s for all of lm-eval's."""
    from lm_eval.tasks import TaskManager

    from lm_eval_lingreg.resources import tasks_dir

    return TaskManager(include_defaults=False, include_path=str(tasks_dir()))


def check_labels(labels: Sequence[str]) -> None:
    """Condition labels name output folders: plain names only."""
    bad = [label for label in labels if not label or label != Path(label).name or label.startswith(".")]
    if bad:
        raise UsageError(f"condition labels must be plain names (they name output folders), got {bad}")


def _apply(lm: Any, cond: Condition) -> tuple[dict[str, Any], Any]:
    """Apply one condition to the wrapper's model; (what to record, how to undo it)."""
    if isinstance(cond, Region):
        saved = apply(cond, lm.model)
        return {"entries_changed": saved.num_entries, "mask_metadata": cond.metadata}, saved.restore
    if cond:
        applied = perturb(lm.model, cond, tokenizer=lm.tokenizer)
        return applied.info(), applied.restore
    return {"entries_changed": 0}, None


@contextlib.contextmanager
def _batch_size(lm: Any, batch_size: int | None) -> Iterator[None]:
    """Requests batched `batch_size` at a time while the block runs (generation is ~3x faster batched on a CPU)."""
    if batch_size is None or not hasattr(lm, "batch_size_per_gpu"):
        yield
        return
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise UsageError(f"batch size must be a whole number >= 1, got {batch_size!r}")
    saved, lm.batch_size_per_gpu = lm.batch_size_per_gpu, batch_size
    try:
        yield
    finally:
        lm.batch_size_per_gpu = saved


def evaluate_conditions(
    lm: Any,
    conditions: Mapping[str, Condition],
    langs: Sequence[str] = (),
    limit: int | None = None,
    output_dir: str | os.PathLike | None = None,
    first: int = 0,
    tasks: Sequence[str] | None = None,
    batch_size: int | None = None,
    gen_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, dict]:
    """Run lm-eval on `lm` under each condition; return {condition: lm-eval results dict}.

    A condition is a region (its entries are zeroed), a list of perturbations, or None (the
    unchanged model). `lm` is a lingreg HFLM wrapper (`LingregLM`). By default the perplexity
    tasks of `langs` run; `tasks` names any tasks of this package instead (`lingreg_gen_<iso>`,
    `lingreg_mt_<src>_<tgt>`, see `language_tasks`). Each task reads `limit` documents (None: all)
    from document `first`. `batch_size` batches the requests while this runs; `gen_kwargs` (e.g.
    `{"max_gen_toks": 16}`) override the generation tasks' own settings. With `output_dir`,
    each condition's results JSON is written atomically to `<output_dir>/<condition>/results.json`.
    """
    check_labels(list(conditions))
    names = list(tasks) if tasks is not None else task_names(langs)
    _check_tasks(names, limit, first)
    counts = {t: limit or _documents_in(t) - first for t in names}  # documents each task reads
    which = {"limit": limit} if not first else {"samples": {t: list(range(first, first + n)) for t, n in counts.items()}}
    if output_dir is not None:
        check_writable(output_dir, into=True)
    manager = task_manager()
    with progress.job(len(conditions) * sum(counts[t] for t in names), f"{len(conditions)} conditions x {len(names)} tasks"):
        return _evaluate_each(lm, conditions, names, manager, which, batch_size, gen_kwargs, output_dir)


def _evaluate_each(
    lm: Any,
    conditions: Mapping[str, Condition],
    names: list[str],
    manager: Any,
    which: dict[str, Any],
    batch_size: int | None,
    gen_kwargs: Mapping[str, Any] | None,
    output_dir: str | os.PathLike | None,
) -> dict[str, dict]:
    import lm_eval
    from lm_eval.utils import handle_non_serializable

    out: dict[str, dict] = {}
    for label, cond in conditions.items():
        info, undo = _apply(lm, cond)
        try:
            with lm.recording(condition=label, **info), _batch_size(lm, batch_size):
                t0 = time.perf_counter()
                results = lm_eval.simple_evaluate(
                    model=lm, tasks=names, task_manager=manager, log_samples=True, gen_kwargs=dict(gen_kwargs) if gen_kwargs else None, **which
                )
                results["config"]["lingreg"]["wall_seconds"] = round(time.perf_counter() - t0, 2)
        finally:
            if undo is not None:
                undo()
        samples = results.pop("samples", {})
        results[DOCUMENTS] = documents(samples)
        results[ITEMS] = items(samples)
        if not results[ITEMS]:
            del results[ITEMS]
        out[label] = results
        if output_dir is not None:
            write_json(Path(output_dir) / label / "results.json", results, default=handle_non_serializable)
    return out


@functools.cache  # the UDHR data ship with the package: a task's document count never changes
def _documents_in(task: str) -> int:
    """Documents of one of this package's tasks (31 UDHR sections; 30 articles to continue; a pair's articles to translate)."""
    from lm_eval_lingreg.language_tasks import task_kind, task_row

    kind = task_kind(task)
    if kind == "gen":
        return UDHR_DOCUMENTS - 1
    if kind == "mt":
        from lm_eval_lingreg.udhr import translation_split

        src, tgt = task_row(task).split("-")
        return len(translation_split(src, tgt)[1])
    if kind == "steer":
        from lm_eval_lingreg.udhr import steering_docs

        return len(steering_docs(*task_row(task).split("-")))
    return UDHR_DOCUMENTS


def _check_tasks(names: Sequence[str], limit: int | None, first: int) -> None:
    from lm_eval_lingreg.language_tasks import task_kind

    if not names:
        raise UsageError("no task to run: give languages (perplexity) or task names")
    unknown = [t for t in names if task_kind(t) is None]
    if unknown:
        raise UsageError(
            f"unknown task {unknown[0]!r}: this package's tasks are lingreg_ppl_<iso>, lingreg_gen_<iso>, lingreg_mt_<src>_<tgt> and lingreg_steer_<src>_<tgt>"
        )
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise UsageError(f"limit must be a whole number >= 1 (or None for all documents), got {limit!r}")
    for t in dict.fromkeys(names):
        n = _documents_in(t)
        if not 0 <= first < n or (limit is not None and first + limit > n):
            raise UsageError(f"{t}: documents {first}..{first + (limit or 0) - 1} do not exist: it has {n} UDHR documents (0-{n - 1})")


def ratio_table(results: Mapping[str, Mapping[str, Any]], langs: Sequence[str], limit: int | None, base: str = "base") -> str:
    """Per language: base bits per byte and token perplexity, and every other condition's perplexity ratio to base."""
    from tabulate import tabulate

    from lm_eval_lingreg.languages import LANGUAGES
    from lm_eval_lingreg.results import geomean, per_language

    bpb = per_language(results[base], "bits_per_byte")
    ppl = {c: per_language(r, "token_perplexity") for c, r in results.items()}
    others = [c for c in results if c != base]
    rows = [[LANGUAGES[iso].name, iso, bpb[iso], ppl[base][iso], *(ppl[c][iso] / ppl[base][iso] for c in others)] for iso in langs]
    rows.append(["Geometric mean", "", None, None, *(geomean(r[4 + i] for r in rows) for i in range(len(others)))])
    headers = ["Language", "ISO", "bpb base", "tok-ppl base", *(f"x ppl {c}" for c in others)]
    note = f"{documents_read(limit)}; token perplexity of each ablated model divided by the base model's"
    return note + "\n" + tabulate(rows, headers=headers, floatfmt=".3g", tablefmt="github", missingval="")


def demo(make_lm: Any, masks: Sequence[str], langs: Sequence[str], ratio: float, seed: int, limit: int | None, output_dir: str | os.PathLike | None) -> str:
    """The main job: base, the given masks and a seeded random region of `ratio` per tensor, on one model.

    Mask files are read and checked before the model loads (`make_lm()` loads it). Returns the table.
    """
    import logging

    from lm_eval_lingreg.anatomy import scope_shapes
    from lm_eval_lingreg.region_io import load_region
    from lm_eval_lingreg.regions import validate
    from lm_eval_lingreg.selection import select_random

    log = logging.getLogger(__name__)
    regions: dict[str, Region] = {}
    for m in masks:  # bad mask files fail before the model loads
        label = Path(m).name.removesuffix(".safetensors").removesuffix(".pt") or m
        regions[label if label not in regions else f"{label}-{len(regions)}"] = load_region(m)
    lm = make_lm()
    for region in regions.values():
        validate(region, lm.model)
    regions[f"random-{ratio:g}"] = select_random(scope_shapes(lm.model), ratio, seed=seed)
    for name, region in regions.items():
        log.info("%s: %d entries (%.2f%% of the %d parameters it covers)", name, region.num_selected, 100 * region.density, region.num_covered)
    results = evaluate_conditions(lm, {"base": None, **regions}, langs, limit=limit, output_dir=output_dir)
    return ratio_table(results, langs, limit)
