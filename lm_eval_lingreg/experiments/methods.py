"""Other published definitions of a language region beside the paper's core region: overlap, effect, selectivity, super weights.

On one model and the same calibration text (the core region's: eld sentences of the six core languages):

- the paper's core region (a shipped mask), Wanda (|W| * ||X||, per tensor), magnitude (|W|) at the same ratio, and
  the union of LAPE neurons (their `down_proj` columns) with the published thresholds;
- their Jaccard overlap matrix;
- each ablated on the 30 languages through the harness, beside random controls of the same shape (random entries
  with the same count per tensor; random neurons with the same count per layer for LAPE);
- LAPE's per-language neurons against the paper's monolingual regions: own-language vs other-language ratios on the
  six languages;
- super weights detected on a prompt: whether they fall inside the core region, and what zeroing them does beside
  zeroing as many random entries of the same tensors.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lm_eval_lingreg.experiments import read_json
from lm_eval_lingreg.languages import CORE_LANGUAGES, LANGUAGES

NAME = "methods"
DEFINITIONS = ("core", "wanda", "magnitude", "lape")


@dataclass
class Plan:
    langs: list[str] = field(default_factory=lambda: list(CORE_LANGUAGES))  # calibration languages (and LAPE's)
    samples: int = 200
    ratio: float = 0.01
    core: str = "core-top-1"  # a shipped mask name or a region file made at `ratio` from the same languages
    mono: str = "mono-{iso}-1"  # the paper's monolingual regions; "" leaves the selectivity part out
    eval_langs: list[str] = field(default_factory=lambda: list(LANGUAGES))
    limit: int | None = 2
    prompt: str = "Apple Inc. is a worldwide tech company."
    spike: float = 10.0
    seed: int = 0


def plan_from(record: dict[str, Any]) -> Plan:
    return Plan(**record["plan"])


def random_like(region: Any, seed: int) -> Any:
    """Random entries with the same count in every tensor as `region`."""
    import torch

    from lm_eval_lingreg.anatomy import numel
    from lm_eval_lingreg.regions import Region

    gen = torch.Generator().manual_seed(seed)
    indices = {n: torch.sort(torch.randperm(numel(region.shapes[n]), generator=gen)[: idx.numel()]).values for n, idx in region.indices.items()}
    return Region(indices, dict(region.shapes), {"kind": "random-like", "seed": seed, "like": region.metadata.get("kind")})


def random_neurons_like(neurons: list[list[Any]], shapes: dict, seed: int) -> list[list[Any]]:
    """One 'language' of random neurons: as many per layer as the union of `neurons` holds."""
    import torch

    from lm_eval_lingreg.sources import down_projs, layer_neurons

    downs = down_projs(shapes)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for layer in range(len(neurons[0])):
        count = torch.unique(torch.cat([lang[layer] for lang in neurons])).numel()
        out.append(torch.sort(torch.randperm(layer_neurons(downs[layer], shapes[downs[layer]]), generator=gen)[:count]).values)
    return [out]


def run(lm: Any, plan: Plan, out: Path) -> dict[str, float]:
    from lm_eval_lingreg.anatomy import scope_shapes
    from lm_eval_lingreg.corpora import make_samples
    from lm_eval_lingreg.evaluation import evaluate_conditions
    from lm_eval_lingreg.experts import has_experts, spread_rows
    from lm_eval_lingreg.outputs import write_json
    from lm_eval_lingreg.region_io import load_region
    from lm_eval_lingreg.regions import jaccard, validate

    model, tok = lm.model, lm.tokenizer
    shapes = scope_shapes(model)
    timing: dict[str, float] = {}
    core = load_region(plan.core)
    validate(core, model)
    samples = {lang: make_samples(tok, lang, plan.samples, seed=plan.seed).input_ids for lang in plan.langs}
    tokens = sum(len(s) for v in samples.values() for s in v)
    built, neurons, found = _build_sources(lm, plan, samples, shapes, timing)
    regions = {"core": core, **built}
    overlap = {a: {b: jaccard(regions[a], regions[b])[0] for b in DEFINITIONS} for a in DEFINITIONS}
    inside = _super_weights_in_core(found, shapes, core)
    conditions = _conditions(plan, regions, neurons, found, shapes)
    t = time.perf_counter()
    evaluate_conditions(lm, conditions, plan.eval_langs, limit=plan.limit, output_dir=out / "harness")
    timing["harness"] = time.perf_counter() - t
    _evaluate_selectivity(lm, plan, neurons, shapes, out, timing)
    write_json(
        out / "methods.json",
        {
            "calibration": {"languages": plan.langs, "samples": plan.samples, "tokens": tokens, "unit": "sentences", "data": "eld"},
            "entries": {k: r.num_selected for k, r in conditions.items() if r is not None},
            "covered": core.num_covered,
            "lape_neurons": {iso: sum(int(t.numel()) for t in layer) for iso, layer in zip(plan.langs, neurons, strict=True)},
            "lape_union_neurons": sum(int(t.numel()) for t in random_neurons_like(neurons, shapes, plan.seed)[0]),
            "overlap": overlap,
            "super_weights": inside,
            "experts": {k: spread_rows(r) for k, r in regions.items()} if has_experts(shapes) else {},
            "device": str(lm._lingreg_info["device"]),
            "dtype": lm._lingreg_info["dtype"],
        },
    )
    return timing


def _build_sources(lm: Any, plan: Plan, samples: dict[str, Any], shapes: dict, timing: dict[str, float]) -> tuple[dict[str, Any], Any, list]:
    """The wanda, magnitude and LAPE regions, LAPE's neurons and the super weights found on the prompt, each timed into `timing`."""
    from lm_eval_lingreg.experts import has_experts
    from lm_eval_lingreg.sources import (
        activation_probabilities,
        detect_super_weights,
        input_norms,
        lape_neurons,
        lape_region,
        select_magnitude,
        select_wanda,
    )

    model, tok = lm.model, lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    t = time.perf_counter()
    magnitude = select_magnitude(model, plan.ratio)
    timing["magnitude"] = time.perf_counter() - t
    t = time.perf_counter()
    norms, _ = input_norms(model, [s for v in samples.values() for s in v], pad_id=pad)
    wanda = select_wanda(model, norms, plan.ratio)
    timing["wanda"] = time.perf_counter() - t
    t = time.perf_counter()
    probs, _ = activation_probabilities(model, samples, pad_id=pad)
    neurons = lape_neurons(probs)
    lape = lape_region(neurons, shapes)
    timing["lape"] = time.perf_counter() - t
    t = time.perf_counter()
    found = [] if has_experts(shapes) else detect_super_weights(model, tok(plan.prompt)["input_ids"], spike=plan.spike)  # dense down_proj only
    timing["super_weight"] = time.perf_counter() - t
    return {"wanda": wanda, "magnitude": magnitude, "lape": lape}, neurons, found


def _super_weights_in_core(found: list, shapes: dict, core: Any) -> list[dict[str, Any]]:
    """Each super weight found, with whether the core region holds it."""
    from lm_eval_lingreg.anatomy import layer_index

    inside = []
    for f in found:
        name = next(n for n in shapes if layer_index(n, ".mlp.down_proj.weight") == f["layer"])
        flat = f["row"] * shapes[name][1] + f["col"]
        inside.append({**f, "in_core": name in core.indices and bool((core.indices[name] == flat).any())})
    return inside


def _conditions(plan: Plan, regions: dict[str, Any], neurons: Any, found: list, shapes: dict) -> dict[str, Any]:
    """What the harness ablates: nothing, each definition, their random controls, and the super weights beside as many random entries."""
    from lm_eval_lingreg.sources import coordinates_region, lape_region

    conditions: dict[str, Any] = {"base": None, **regions, "random-1pct": random_like(regions["core"], plan.seed)}
    conditions["random-neurons"] = lape_region(random_neurons_like(neurons, shapes, plan.seed), shapes)
    if found:
        sw = coordinates_region([(f["layer"], f["row"], f["col"]) for f in found], shapes)
        conditions["super-weight"] = sw
        conditions["random-entries"] = random_like(sw, plan.seed)
    return conditions


def _evaluate_selectivity(lm: Any, plan: Plan, neurons: Any, shapes: dict, out: Path, timing: dict[str, float]) -> None:
    """LAPE's per-language neurons beside the paper's monolingual regions, on the calibration languages (unless `plan.mono` is empty)."""
    from lm_eval_lingreg.evaluation import evaluate_conditions
    from lm_eval_lingreg.region_io import load_region
    from lm_eval_lingreg.sources import lape_region

    per_lang = {iso: lape_region(neurons, shapes, [i]) for i, iso in enumerate(plan.langs) if any(t.numel() for t in neurons[i])}
    if plan.mono:
        selective: dict[str, Any] = {f"lape-{iso}": r for iso, r in per_lang.items()}
        selective |= {f"mono-{iso}": load_region(plan.mono.format(iso=iso)) for iso in plan.langs}
        t = time.perf_counter()
        evaluate_conditions(lm, {"base": None, **selective}, plan.langs, limit=plan.limit, output_dir=out / "selectivity")
        timing["selectivity"] = time.perf_counter() - t


def section(out: Path, record: dict[str, Any]) -> str:
    from lm_eval_lingreg.report import fmt_short as fmt
    from lm_eval_lingreg.results import geomean, per_language

    plan = plan_from(record)
    info = read_json(out / "methods.json")
    secs = record["seconds"]
    harness = {p.name: read_json(p / "results.json") for p in sorted((out / "harness").iterdir()) if os.path.lexists(p / "results.json")}
    ppl = {c: per_language(r, "token_perplexity") for c, r in harness.items()}
    conds = [c for c in ["core", "wanda", "magnitude", "lape", "random-1pct", "random-neurons", "super-weight", "random-entries"] if c in ppl]
    ratio = {c: {iso: ppl[c][iso] / ppl["base"][iso] for iso in plan.eval_langs} for c in conds}
    cal = info["calibration"]
    lines = [
        "# Other definitions of a language region, side by side (bundled Gemma-3-270M)",
        "",
        f"Generated by `{record['command']}` in {sum(secs.values()) / 60:.1f} min on {info['device']} ({info['dtype']}). "
        f"Calibration for every source: {cal['samples']} eld sentences of each of {', '.join(cal['languages'])} ({cal['tokens']:,} tokens), "
        f"the text the core region was scored on. Harness: `lingreg_ppl`, {plan.limit or 31} UDHR documents per language, token perplexity "
        "divided by the unchanged model's. Raw results: `" + str(out) + "`.",
        "",
        "| definition | how | entries | time to build |",
        "|---|---|---|---|",
        f"| core | the paper: top 1% of sum over languages of abs(theta * grad), per tensor (`{plan.core}`) | {info['entries']['core']:,} | (scoring: `lingreg score`) |",
        f"| wanda | top 1% of abs(W_ij) * norm(X_j), per tensor | {info['entries']['wanda']:,} | {secs['wanda']:.0f} s |",
        f"| magnitude | top 1% of abs(W), per tensor | {info['entries']['magnitude']:,} | {secs['magnitude']:.0f} s |",
        f"| lape | down_proj columns of the {info['lape_union_neurons']} LAPE neurons of the six languages (published thresholds) | {info['entries']['lape']:,} | {secs['lape']:.0f} s |",
        "",
        f"All cover the {info['covered']:,} in-scope parameters (transformer blocks). Wanda and LAPE each took one forward pass of the "
        "model body over the calibration text, no backward.",
        "",
        "## Overlap (Jaccard index)",
        "",
        "| | " + " | ".join(DEFINITIONS) + " |",
        "|---|" + "---|" * len(DEFINITIONS),
    ]
    for a in DEFINITIONS:
        lines.append(f"| {a} | " + " | ".join(f"{info['overlap'][a][b]:.3f}" for b in DEFINITIONS) + " |")
    lines += [
        "",
        "## Effect on the 30 languages: perplexity ratio to the unchanged model",
        "",
        "`random-1pct`: random entries, as many per tensor as the core region; `random-neurons`: random FFN neurons, as many "
        "per layer as LAPE's union (the control for `lape`)"
        + ("; `random-entries`: as many random entries of the same tensors as the super weights (their control)." if "super-weight" in ppl else "."),
        "",
        "| Language | " + " | ".join(conds) + " |",
        "|---|" + "---|" * len(conds),
    ]
    for iso in plan.eval_langs:
        lines.append(f"| {LANGUAGES[iso].name} | " + " | ".join(fmt(ratio[c][iso]) for c in conds) + " |")
    lines.append("| **geometric mean** | " + " | ".join(f"**{fmt(geomean(ratio[c].values()))}**" for c in conds) + " |")
    lines += expert_lines(info.get("experts", {}))
    lines += _selectivity(out, plan, info)
    lines += _super_weights(info, ratio)
    lines += _findings(info, ratio, conds)
    return "\n".join(lines) + "\n"


def expert_lines(spreads: dict[str, list[dict[str, Any]]]) -> list[str]:
    """How each definition spreads over the experts of a mixture-of-experts model (none for a dense model)."""
    if not spreads:
        return []
    lines = [
        "",
        "## How each definition spreads over the experts",
        "",
        "Per MoE layer: the definition's entries in the fused expert tensors, the expert holding most of them (its share), "
        "and the effective number of experts, exp(entropy) of the counts per expert.",
        "",
        "| definition | layer | entries in experts | top expert (share) | effective experts |",
        "|---|---|---|---|---|",
    ]
    for name, rows in spreads.items():
        for r in rows:
            top = "-" if r["top"] is None else f"{r['top']} ({r['top_share']:.0%})"
            lines.append(f"| {name} | {r['layer']} | {r['selected']:,} | {top} | {r['effective']:.1f} of {r['experts']} |")
    return lines


def _selectivity(out: Path, plan: Plan, info: dict) -> list[str]:
    from lm_eval_lingreg.report import fmt_short as fmt
    from lm_eval_lingreg.results import per_language

    folder = out / "selectivity"
    if not folder.is_dir():
        return []
    res = {p.name: per_language(read_json(p / "results.json"), "token_perplexity") for p in folder.iterdir() if os.path.lexists(p / "results.json")}
    lines = [
        "",
        "## Language-specific definitions: LAPE neurons of one language vs the paper's monolingual region",
        "",
        f"Perplexity ratio on the region's own language and the mean over the other {len(plan.langs) - 1} of the six; selectivity = own / mean of others.",
        "",
        "| language | LAPE neurons | LAPE own | LAPE others | LAPE selectivity | mono own | mono others | mono selectivity |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for iso in plan.langs:
        row = [f"{LANGUAGES[iso].name} ({iso})", str(info["lape_neurons"][iso])]
        for kind in ("lape", "mono"):
            if f"{kind}-{iso}" not in res:  # a language LAPE assigns no neuron to
                row += ["-", "-", "-"]
                continue
            r = {x: res[f"{kind}-{iso}"][x] / res["base"][x] for x in plan.langs}
            others = statistics.fmean(r[x] for x in plan.langs if x != iso)
            row += [fmt(r[iso]), fmt(others), fmt(r[iso] / others)]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _super_weights(info: dict, ratio: dict) -> list[str]:
    from lm_eval_lingreg.report import fmt_short as fmt
    from lm_eval_lingreg.results import geomean

    found = info["super_weights"]
    if not found:
        return ["", "## Super weights", "", "No layer's down_proj output spiked on the prompt (threshold: 10x the median over layers)."]
    lines = [
        "",
        "## Super weights",
        "",
        "| layer | row | col | max abs input | max abs output | x median | in the core region |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in found:
        lines.append(
            f"| {f['layer']} | {f['row']} | {f['col']} | {f['max_abs_input']:.4g} | {f['max_abs_output']:.4g} | {f['times_median']:.1f} | {'yes' if f['in_core'] else 'no'} |"
        )
    if "super-weight" in ratio:
        lines += [
            "",
            f"Zeroing these {len(found)} entries: geometric-mean ratio {fmt(geomean(ratio['super-weight'].values()))} over the languages, "
            f"against {fmt(geomean(ratio['random-entries'].values()))} for as many random entries of the same tensors.",
        ]
    return lines


def _findings(info: dict, ratio: dict, conds: list[str]) -> list[str]:
    from lm_eval_lingreg.report import fmt_short as fmt
    from lm_eval_lingreg.results import geomean

    g = {c: geomean(ratio[c].values()) for c in conds}
    ranked = sorted(["core", "wanda", "magnitude"], key=g.get, reverse=True)
    ov = info["overlap"]
    return [
        "",
        "## What this shows",
        "",
        f"- At the same size, the most damaging of the three entry-level definitions is {ranked[0]} (geometric-mean ratio {fmt(g[ranked[0]])}), "
        f"then {ranked[1]} ({fmt(g[ranked[1]])}) and {ranked[2]} ({fmt(g[ranked[2]])}); random entries of the same counts give {fmt(g['random-1pct'])}.",
        f"- The core region shares {ov['core']['wanda']:.1%} of its union with Wanda's and {ov['core']['magnitude']:.1%} with magnitude's "
        f"(random 1% regions share about {0.01 / (2 - 0.01):.2%}).",
        f"- LAPE's union ({info['entries']['lape']:,} entries) gives {fmt(g['lape'])} against {fmt(g['random-neurons'])} for as many random neurons.",
    ]
