"""Steering the output language: DiffMean vectors, LAPE neuron activations and monolingual regions, side by side.

Beyond the paper. English prompts (the openings of UDHR articles) are continued greedily under each
intervention, and `lingreg_steer_en_<tgt>` judges what comes out: the share of outputs in the wanted
language and the chrF against that language's text of the same article (is the meaning kept?). Three
families of intervention are built on the loaded model and compared on one metric:

- **DiffMean**: the mean residual stream on target-language sentences minus that on English ones, added
  `value` times after one decoder layer (`vector=`; CLaS-Bench, arXiv 2601.08331);
- **neurons**: the target language's LAPE neurons (arXiv 2402.16438) set to their mean or median activation on
  target-language text (Kojima et al., arXiv 2404.02431) or multiplied ("language arithmetics", arXiv 2507.22608);
- **regions**: the target's monolingual region (shipped `mono-<iso>-1`) multiplied by `value`.

In reverse, prompts in each language run with that language's own LAPE neurons zeroed, or its monolingual
region removed: does that alone switch the output language, and to which? The model is restored after every
condition; the vectors and neuron regions used are saved beside the results.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lm_eval_lingreg.languages import CORE_LANGUAGES

NAME = "steering"


@dataclass
class Plan:
    source: str = "en"
    targets: list[str] = field(default_factory=lambda: list(CORE_LANGUAGES))  # ar, es, ru, zh, ko, vi
    vector_layers: list[int] = field(default_factory=lambda: [3, 8])  # DiffMean added after one of these layers...
    vector_values: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])  # ...this many times
    neuron_ops: list[str] = field(default_factory=lambda: ["mean", "median", "mul:3"])  # on the target's LAPE neurons
    region_values: list[float] = field(default_factory=lambda: [1.5, 3.0])  # the target's monolingual region multiplied by
    reverse: list[str] = field(default_factory=lambda: ["en", *CORE_LANGUAGES])  # prompt languages of the reverse runs
    samples: int = 64  # calibration sentences per language (DiffMean and LAPE)
    limit: int | None = 6  # articles per direction
    tokens: int = 32
    batch_size: int = 8

    def conditions(self, target: str) -> dict[str, str]:
        """{label: perturbation spec with {vector}, {neurons} and {region} placeholders} for one target."""
        out = {"base": ""}
        for la in self.vector_layers:
            for v in self.vector_values:
                out[f"diffmean-L{la}-x{v:g}"] = f"vector={{vector}}:layers={la}:value={v:g}"
        for op in self.neuron_ops:
            name, _, value = op.partition(":")
            spec = f"neurons={{neurons}}:op={name}" + (f":value={value}" if value else "") + (f":lang={target}" if name in ("mean", "median") else "")
            out[f"lape-{name}{value}"] = spec
        for v in self.region_values:
            out[f"region-x{v:g}"] = f"mask={{region}}:op=mul:value={v:g}"
        return out


def plan_from(record: dict[str, Any]) -> Plan:
    return Plan(**record["plan"])


def family(label: str) -> str:
    """The family of a condition label: base, diffmean, lape or region."""
    return label.split("-", 1)[0]


def run(lm: Any, plan: Plan, out: Path) -> dict[str, float]:
    """Build the vectors (`vectors/`) and LAPE neuron regions (`neurons/`), then run `steer/<tgt>/<condition>/` and
    `reverse/<iso>/<condition>/`."""
    seconds = {}
    t0 = time.perf_counter()
    vectors = _vectors(lm, plan, out / "vectors")
    neurons = _neurons(lm, plan, out / "neurons")
    seconds["calibration"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    _steer(lm, plan, out / "steer", vectors, neurons)
    _plot(plan, out)
    seconds["steering"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    _reverse(lm, plan, out / "reverse", neurons)
    seconds["reverse"] = time.perf_counter() - t0
    return seconds


def _vectors(lm: Any, plan: Plan, folder: Path) -> dict[str, Path]:
    from lm_eval_lingreg.steering import diffmean, save_vectors

    out = {}
    for tgt in plan.targets:
        info: dict[str, Any] = {}
        vectors = diffmean(lm.model, lm.tokenizer, plan.source, tgt, layers=sorted(set(plan.vector_layers)), samples=plan.samples, info=info)
        meta = {"method": "diffmean", "source": plan.source, "target": tgt, "samples": plan.samples, "tokens": info["tokens"]}
        out[tgt] = save_vectors(vectors, folder / f"{plan.source}-{tgt}.safetensors", meta)
    return out


def _neurons(lm: Any, plan: Plan, folder: Path) -> dict[str, Path | None]:
    """LAPE over the source, the targets and the reverse languages together: {language: its neuron region, or None
    where LAPE gives it no neuron}."""
    from lm_eval_lingreg.anatomy import scope_shapes
    from lm_eval_lingreg.corpora import make_samples
    from lm_eval_lingreg.errors import RegionError
    from lm_eval_lingreg.region_io import save_region
    from lm_eval_lingreg.sources import activation_probabilities, lape_neurons, lape_region

    langs = list(dict.fromkeys([plan.source, *plan.targets, *plan.reverse]))
    samples = {lang: make_samples(lm.tokenizer, lang, plan.samples).input_ids for lang in langs}
    probs, _ = activation_probabilities(lm.model, samples, pad_id=lm.tokenizer.pad_token_id or 0)
    found = lape_neurons(probs)
    shapes = scope_shapes(lm.model)
    out: dict[str, Path | None] = {}
    for i, lang in enumerate(langs):
        try:
            region = lape_region(found, shapes, [i], metadata={"name": f"lape-{lang}", "languages": ",".join(langs), "language": lang})
        except RegionError:  # LAPE assigned this language no neuron
            out[lang] = None
            continue
        out[lang] = save_region(region, folder / f"lape-{lang}.safetensors")
    return out


def _condition(spec: str, **paths: Any) -> list[Any] | None:
    from lm_eval_lingreg.perturbation import parse_spec

    return parse_spec(spec.format(**{k: str(v) for k, v in paths.items()})) if spec else None


def _steer(lm: Any, plan: Plan, folder: Path, vectors: dict[str, Path], neurons: dict[str, Path | None]) -> None:
    from lm_eval_lingreg.evaluation import evaluate_conditions
    from lm_eval_lingreg.language_tasks import steer_task

    for tgt in plan.targets:
        region = _shipped(f"mono-{tgt}-1")
        conditions = {}
        for label, spec in plan.conditions(tgt).items():
            if ("{neurons}" in spec and neurons.get(tgt) is None) or ("{region}" in spec and region is None):
                continue  # no LAPE neuron, or no shipped monolingual region, for this language
            conditions[label] = _condition(spec, vector=vectors[tgt], neurons=neurons.get(tgt), region=region)
        evaluate_conditions(
            lm,
            conditions,
            tasks=[steer_task(plan.source, tgt)],
            limit=plan.limit,
            output_dir=folder / tgt,
            gen_kwargs={"max_gen_toks": plan.tokens},
            batch_size=plan.batch_size,
        )


def _plot(plan: Plan, out: Path) -> None:
    """figures/steering-tradeoff.png: each condition's mean success against its mean chrF over the targets."""
    from lm_eval_lingreg.plots import plot_tradeoff
    from lm_eval_lingreg.results import load_runs

    sums: dict[str, list[float]] = {}
    for tgt in plan.targets:
        for r in load_runs([out / "steer" / tgt]):
            row = r.values[f"{plan.source}-{tgt}"]
            acc = sums.setdefault(r.label, [0.0, 0.0, 0])
            acc[0], acc[1], acc[2] = acc[0] + row["steer_success"], acc[1] + row["steer_chrf"], acc[2] + 1
    points = [(label, family(label), s / n, c / n) for label, (s, c, n) in sums.items()]
    plot_tradeoff(points, out / "figures" / "steering-tradeoff.png", f"Steering {plan.source} -> {', '.join(plan.targets)}: means over targets")


def _reverse(lm: Any, plan: Plan, folder: Path, neurons: dict[str, Path | None]) -> None:
    from lm_eval_lingreg.evaluation import evaluate_conditions
    from lm_eval_lingreg.language_tasks import gen_task

    for iso in plan.reverse:
        conditions: dict[str, Any] = {"base": None}
        if neurons.get(iso) is not None:
            conditions["lape-zero"] = _condition("neurons={neurons}:op=zero", neurons=neurons[iso])
        region = _shipped(f"mono-{iso}-1")
        if region is not None:
            conditions["region-zero"] = _condition("mask={region}", region=region)
        evaluate_conditions(
            lm,
            conditions,
            tasks=[gen_task(iso)],
            limit=plan.limit,
            output_dir=folder / iso,
            gen_kwargs={"max_gen_toks": plan.tokens},
            batch_size=plan.batch_size,
        )


def _shipped(name: str) -> str | None:
    """A shipped mask's name when the package has it, else None."""
    from lm_eval_lingreg.region_io import shipped_masks

    return name if name in shipped_masks() else None


def section(out: Path, record: dict[str, Any]) -> str:
    """The steering page (markdown) from the results under `out`."""
    from lm_eval_lingreg.experiments.steering_page import page

    return page(out, plan_from(record), record)
