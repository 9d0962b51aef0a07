"""Evaluate several conditions (regions, perturbations) on one loaded model through lm-eval, in process.

Loading the model and building the tasks dominate a run on small models, so each
condition is applied to the same model, evaluated, then restored exactly.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lm_eval_lingreg._atomic import write_json
from lm_eval_lingreg.languages import LANGUAGES
from lm_eval_lingreg.perturbation import Perturbation, perturb
from lm_eval_lingreg.regions import Region, apply, restore

METRICS = ("bits_per_byte", "byte_perplexity", "word_perplexity", "token_perplexity")


def task_names(langs: Sequence[str]) -> list[str]:
    return [f"lingreg_ppl_{iso}" for iso in langs]


def evaluate_conditions(
    lm: Any,
    conditions: Mapping[str, Region | Sequence[Perturbation] | None],
    langs: Sequence[str],
    limit: int | None = None,
    output_dir: str | os.PathLike | None = None,
) -> dict[str, dict]:
    """Run lm-eval on `lm` under each condition; return {condition: lm-eval results dict}.

    A condition is a region (its entries are zeroed), a list of perturbations, or None (the
    unchanged model).
    `lm` is a lingreg HFLM wrapper loaded without a mask. With `output_dir`, each
    condition's results JSON is written atomically to `<output_dir>/<condition>/results.json`.
    """
    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable

    bad = [label for label in conditions if not label or label != Path(label).name or label.startswith(".")]
    if bad:
        raise ValueError(f"condition labels must be plain names (they name output folders), got {bad}")
    manager = TaskManager()
    out: dict[str, dict] = {}
    base_info = dict(lm._lingreg_info)
    for label, cond in conditions.items():
        lm._lingreg_info = {**base_info, "condition": label}
        region = cond if isinstance(cond, Region) else None
        if region is not None:
            saved = apply(region, lm.model)
            lm._lingreg_info.update(entries_changed=region.num_selected, mask_metadata=region.metadata)
            undo = functools.partial(restore, region, lm.model, saved)
        elif cond:
            applied = perturb(lm.model, cond)
            lm._lingreg_info.update(applied.info())
            undo = applied.restore
        else:
            lm._lingreg_info.update(entries_changed=0)
            undo = None
        try:
            results = lm_eval.simple_evaluate(model=lm, tasks=task_names(langs), task_manager=manager, limit=limit)
        finally:
            if undo is not None:
                undo()
        results.pop("samples", None)
        out[label] = results
        if output_dir is not None:
            write_json(Path(output_dir) / label / "results.json", results, default=handle_non_serializable)
    lm._lingreg_info = base_info
    return out


def per_language(results: Mapping[str, Any], metric: str) -> dict[str, float]:
    """{iso: value} of one metric from an lm-eval results dict (NaN where absent)."""
    table = results.get("results", {})
    values = {}
    for iso in LANGUAGES:
        row = table.get(f"lingreg_ppl_{iso}")
        if row is None:
            continue
        value = row.get(f"{metric},none")
        values[iso] = float(value) if isinstance(value, (int, float)) else math.nan
    return values
