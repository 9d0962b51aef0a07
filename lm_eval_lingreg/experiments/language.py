"""Which language comes out: continuation and translation with the core, random and monolingual regions removed.

Beyond the paper, which measures perplexity one language at a time. Each region is applied to the
one loaded model, the generation tasks (`lingreg_gen_<iso>`: continue the opening of a UDHR article,
greedily) and translation tasks (`lingreg_mt_<src>_<tgt>`, few-shot) run through lm-eval, and the
model is restored exactly. Language fidelity and chrF come with paired bootstrap intervals over
prompts (`lingreg table --ci`); differences to the unchanged model are run minus base.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lm_eval_lingreg.languages import CORE_LANGUAGES, LANGUAGES

NAME = "language"


@dataclass
class Plan:
    gen_langs: list[str] = field(default_factory=lambda: list(LANGUAGES))  # continuation, for base and the core/random regions
    mono: list[str] = field(default_factory=lambda: list(CORE_LANGUAGES))  # monolingual regions, each with its bottom control
    mono_gen_langs: list[str] = field(default_factory=lambda: ["en", *CORE_LANGUAGES])  # continuation under the monolingual regions
    pairs: list[str] = field(default_factory=lambda: [p for iso in CORE_LANGUAGES for p in (f"en-{iso}", f"{iso}-en")])
    gen_limit: int | None = 5  # articles continued per language
    mt_limit: int | None = 3  # articles translated per direction
    gen_tokens: int = 32
    mt_tokens: int = 64
    batch_size: int = 8
    core: list[str] = field(default_factory=lambda: ["core-top-1", "core-random-1"])

    @property
    def monolingual(self) -> list[str]:
        return [m for iso in self.mono for m in (f"mono-{iso}-1", f"mono-{iso}-bottom-1")]

    @property
    def conditions(self) -> list[str]:
        return ["base", *self.core, *self.monolingual]


def plan_from(record: dict[str, Any]) -> Plan:
    return Plan(**record["plan"])


def run(lm: Any, plan: Plan, out: Path) -> dict[str, float]:
    """Continuation under base and the core/random regions (all `gen_langs`) and the monolingual regions (`mono_gen_langs`);
    translation of `pairs` under all of them. Results under `out/gen/<condition>/` and `out/mt/<condition>/`."""
    from lm_eval_lingreg.evaluation import evaluate_conditions
    from lm_eval_lingreg.language_tasks import gen_task, mt_task, parse_pairs
    from lm_eval_lingreg.region_io import load_region

    regions = {m: load_region(m) for m in plan.core + plan.monolingual}
    first = {"base": None, **{m: regions[m] for m in plan.core}}
    mono = {m: regions[m] for m in plan.monolingual}
    seconds = {}
    t0 = time.perf_counter()
    for conditions, langs in ((first, plan.gen_langs), (mono, plan.mono_gen_langs)):
        if conditions:
            evaluate_conditions(
                lm,
                conditions,
                tasks=[gen_task(i) for i in langs],
                limit=plan.gen_limit,
                output_dir=out / "gen",
                gen_kwargs={"max_gen_toks": plan.gen_tokens},
                batch_size=plan.batch_size,
            )
    seconds["generation"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pairs = [mt_task(s, t) for s, t in parse_pairs(plan.pairs)]
    if pairs:
        evaluate_conditions(
            lm,
            {**first, **mono},
            tasks=pairs,
            limit=plan.mt_limit,
            output_dir=out / "mt",
            gen_kwargs={"max_gen_toks": plan.mt_tokens},
            batch_size=plan.batch_size,
        )
    seconds["translation"] = time.perf_counter() - t0
    return seconds


def section(out: Path, record: dict[str, Any]) -> str:
    """The language page (markdown) from the results under `out`."""
    from lm_eval_lingreg.experiments.language_page import page

    return page(out, plan_from(record), record)
