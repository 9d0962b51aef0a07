"""`lingreg reproduce`: the paper's experiments on the bundled model, in one process, with a report.

Composes the experiments of `lm_eval_lingreg.experiments` on one loaded model: raw results go
under `<out>/<experiment>/`, figures next to the report, and the report states the command
and the wall time of every phase. `--only` runs (or rewrites) a single experiment's page; the
pages in docs/ are made this way.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lm_eval_lingreg import experiments
from lm_eval_lingreg.errors import UsageError
from lm_eval_lingreg.experiments import dimensions, evaluation, forgetting, language, methods, protocol, regions, steering
from lm_eval_lingreg.outputs import atomic_path, check_target, write_text

log = logging.getLogger(__name__)
OWNER = "lingreg reproduce"

FULL = {
    "regions": regions.Plan(),
    "dimensions": dimensions.Plan(),
    "forgetting": forgetting.Plan(),
    "evaluation": evaluation.Plan(),
    "protocol": protocol.Plan(),
    "methods": methods.Plan(),
    "language": language.Plan(),
    "steering": steering.Plan(),
}
#: The plan field each experiment reads its harness document count from (`lingreg reproduce --limit`).
LIMIT_FIELDS = {"regions": "limit", "protocol": "limit", "methods": "limit", "forgetting": "eval_limit", "dimensions": "harness_limit"}
#: CI-sized: every experiment end to end in a few minutes; its results carry the tests of the paper's findings.
QUICK = {
    # articles 1-3, not the long preamble: a third of the tokens, and three documents for the intervals
    "regions": regions.Plan(langs=["ar", "zh", "ko", "en", "fr", "sw"], limit=3, first_doc=1, ratios=[1], mono=["ar", "zh", "ko"]),
    "dimensions": dimensions.Plan(
        top=5, random=5, param_top=2, gain_scan=False, langs=["en", "zh", "ar"], docs=1, tokens=64, activations=False, harness_limit=None, prompts=[]
    ),
    "forgetting": forgetting.Plan(
        conditions=["none", "core:0.05", "random:0.05"], eval_langs=["en", "ko", "zh"], eval_limit=1, eval_first=1, steps=3, watch_blocks=1
    ),
    "protocol": protocol.Plan(langs=["ar", "zh", "ko"], samples=16, checkpoints=[8], eval_langs=["en", "ar", "zh", "ko"], limit=1),
    "methods": methods.Plan(langs=["ar", "zh", "ko"], samples=16, eval_langs=["en", "ar", "zh", "ko"], limit=1),
    "language": language.Plan(
        gen_langs=["en", "zh", "ar"], mono=["zh"], mono_gen_langs=["en", "zh"], pairs=["en-zh"], gen_limit=2, mt_limit=1, gen_tokens=12, mt_tokens=16
    ),
    "steering": steering.Plan(
        targets=["zh"], vector_layers=[3], vector_values=[1.0], neuron_ops=["mean"], region_values=[2.0], reverse=["zh"], samples=16, limit=2, tokens=12
    ),
}


def run(out: Path, plans: dict[str, Any], command: str, lm: Any = None, overwrite: bool = False) -> dict[str, dict]:
    """Run the planned experiments on one loaded model (the bundled one unless `lm` is given); return their records.

    Each experiment's folder `<out>/<name>` is written as a whole (complete or absent); an existing one is replaced only
    when an earlier `lingreg reproduce` wrote it, or with `overwrite`.
    """
    from lm_eval_lingreg.models import LingregLM

    for name in plans:
        check_target(out / name, directory=True, overwrite=overwrite, owned_by=OWNER)
    t = time.perf_counter()
    lm = lm or LingregLM(device="cpu", dtype="float32", batch_size=1)
    load = time.perf_counter() - t
    records = {}
    for i, (name, plan) in enumerate(plans.items(), 1):
        module = experiments.module(name)
        log.info("[%d/%d] %s: %s", i, len(plans), name, module.__doc__.strip().splitlines()[0])
        with atomic_path(out / name, directory=True, overwrite=overwrite, owned_by=OWNER) as tmp:
            seconds = module.run(lm, plan, tmp)
            if i == 1:
                seconds = {"load": load, **seconds}
            records[name] = experiments.write_record(tmp, name, asdict(plan), seconds, command)
    return records


def write_report(out: Path, doc: Path, names: list[str]) -> Path:
    """The markdown report of the named experiments from their results under `out`; figures are copied next to `doc`."""
    records = {name: experiments.read_record(out / name) for name in names}
    pages = []
    for name, record in records.items():
        try:
            pages.append(experiments.module(name).section(out / name, record))
        except (KeyError, TypeError, ValueError, IndexError, OSError, AttributeError, ArithmeticError, RecursionError) as e:
            raise UsageError(f"the {name} results under {out / name} are incomplete or corrupt ({type(e).__name__}: {e}); rerun without --from-results") from e
        figures = out / name / "figures"
        if figures.is_dir():
            (doc.parent / "figures").mkdir(parents=True, exist_ok=True)
            for fig in sorted(figures.iterdir()):
                if fig.resolve() != (doc.parent / "figures" / fig.name).resolve():
                    shutil.copyfile(fig, doc.parent / "figures" / fig.name)
    if len(pages) == 1:
        return write_text(doc, pages[0])
    total = {name: sum(r["seconds"].values()) for name, r in records.items()}
    commands = {r["command"] for r in records.values()}
    made = f"Generated by `{commands.pop()}`" if len(commands) == 1 else "Composed from the experiments' own runs (each section names its command)"
    head = (
        "# Reproducing the paper on the bundled model\n\n"
        f"{made} on Gemma-3-270M (CPU, float32). Wall time: {sum(total.values()) / 60:.1f} min "
        f"({', '.join(f'{k} {v / 60:.1f} min' for k, v in total.items())}). Raw results: `{out}`.\n"
    )
    return write_text(doc, head + "\n" + "\n".join(experiments.demote(p) for p in pages))
