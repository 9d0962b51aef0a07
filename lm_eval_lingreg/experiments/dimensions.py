"""Finding 2: the hidden dimensions the core region concentrates on, and how fragile they are.

1. Region entries per hidden dimension (`lingreg dims`), with mean |activation| per dimension.
2. Whole-dimension scan: every layer-1 entry on a dimension multiplied, top region dimensions vs random ones.
3. Single-parameter scan: one entry of each layer-1 norm weight multiplied (the paper's experiment).
4. The harness on the strongest perturbation of each kind and its strongest random control.
5. Greedy generations under those conditions and with the core region zeroed.
Steps 4 and 5 (and the activations) are optional in the plan.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lm_eval_lingreg.experiments import read_json
from lm_eval_lingreg.languages import CORE_LANGUAGES, LANGUAGES

NAME = "dimensions"
FIGURE = "dims-core-top-1.png"
#: The order a decoder layer applies its norms (Gemma-3 has all four; Llama the first two).
NORM_ORDER = ["input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm"]
PROMPTS = ["Fudan University is located in", "复旦大学位于", "There are 365 days in a year and 12", "Москва — столица"]


@dataclass
class Plan:
    mask: str = "core-top-1"
    layer: int = 1
    value: float = 4.0
    top: int = 20  # whole-dimension scan: top region dimensions ...
    random: int = 20  # ... and random controls
    param_top: int = 10  # single-parameter scan: per norm tensor, this many top and random dimensions
    gain_scan: bool = True  # the single-parameter scan again with on=gain (x value on the norm's effective gain)
    langs: list[str] = field(default_factory=lambda: ["en", "zh", "ar", "ru"])
    docs: int = 2
    tokens: int = 128
    activations: bool = True
    harness_limit: int | None = 2  # None: no harness step
    harness_langs: list[str] = field(default_factory=lambda: list(LANGUAGES))
    prompts: list[str] = field(default_factory=lambda: list(PROMPTS))


def run(lm: Any, plan: Plan, out: Path) -> dict[str, float]:
    """Every step of the plan on the loaded wrapper's model; JSON and the figure under `out`."""
    from lm_eval_lingreg.anatomy import model_slots
    from lm_eval_lingreg.corpora import read_texts
    from lm_eval_lingreg.dimensions import dimension_counts, mean_abs_activations
    from lm_eval_lingreg.outputs import write_json
    from lm_eval_lingreg.plots import plot_dimensions
    from lm_eval_lingreg.region_io import load_region
    from lm_eval_lingreg.scan import ProbeSet, dimension_candidates, probe_texts, random_dims, scan

    model, tok = lm.model, lm.tokenizer
    timing: dict[str, float] = {}
    t = time.perf_counter()
    dc = dimension_counts(load_region(plan.mask))
    acts = mean_abs_activations(model, tok, [s for iso in CORE_LANGUAGES for s in read_texts(iso)[0][:8]]) if plan.activations else None
    dims = dc.to_json(20, acts)
    if acts:
        dims["activations_top"] = acts["top"]
    write_json(out / "dims.json", dims)
    plot_dimensions(dc, out / "figures" / FIGURE, top=12, title="Core top-1% region of Gemma-3-270M: entries per hidden dimension")
    timing["dims"] = time.perf_counter() - t

    ranked = dc.ranked()
    top, rnd = ranked[: plan.top], random_dims(dc.hidden, plan.random, ranked[: max(plan.top, 20)], seed=0)
    probe = ProbeSet.build(tok, probe_texts(plan.langs, plan.docs), plan.tokens)
    op = {"op": "mul", "value": plan.value}
    t = time.perf_counter()
    scan_dim = scan(model, probe, dimension_candidates([("top", d) for d in top] + [("random", d) for d in rnd], layers=(plan.layer,), **op))
    write_json(out / "scan-dimension.json", scan_dim)
    timing["scan_dimension"] = time.perf_counter() - t

    t = time.perf_counter()
    slots, _ = model_slots(model)
    norms = [s for s in slots.values() if s.layer == plan.layer and s.role == "norm"]
    k = min(plan.param_top, plan.top)
    picks = [("top", d) for d in top[:k]] + [("random", d) for d in rnd[:k]]
    cands = [c for s in norms for c in dimension_candidates(picks, param=s.name, label_prefix=f"{s.module}:", **op)]
    scan_param = scan(model, probe, cands)
    write_json(out / "scan-parameter.json", scan_param)
    timing["scan_parameter"] = time.perf_counter() - t
    if plan.gain_scan:
        t = time.perf_counter()
        cands = [c for s in norms for c in dimension_candidates(picks, param=s.name, label_prefix=f"{s.module}:", on="gain", **op)]
        write_json(out / "scan-parameter-gain.json", scan(model, probe, cands))
        timing["scan_parameter_gain"] = time.perf_counter() - t

    if plan.harness_limit is not None or plan.prompts:
        timing |= _harness_and_generations(lm, plan, out, scan_dim, scan_param)
    return timing


def _harness_and_generations(lm: Any, plan: Plan, out: Path, scan_dim: dict, scan_param: dict) -> dict[str, float]:
    from lm_eval_lingreg.evaluation import evaluate_conditions
    from lm_eval_lingreg.generation import generate
    from lm_eval_lingreg.outputs import write_json
    from lm_eval_lingreg.perturbation import parse_spec

    def strongest(rows: list[dict], kind: str) -> dict:
        return next(r for r in rows if f"{kind}:d" in r["label"])

    chosen = {
        "param-top": strongest(scan_param["rows"], "top"),
        "param-random": strongest(scan_param["rows"], "random"),
        "dim-top": strongest(scan_dim["rows"], "top"),
        "dim-random": strongest(scan_dim["rows"], "random"),
    }
    write_json(out / "chosen.json", {k: {"label": r["label"], "spec": r["spec"]} for k, r in chosen.items()})
    conditions = {"base": None, **{k: parse_spec(r["spec"]) for k, r in chosen.items()}}
    timing = {}
    if plan.harness_limit is not None:
        t = time.perf_counter()
        evaluate_conditions(lm, conditions, plan.harness_langs, limit=plan.harness_limit, output_dir=out / "harness")
        timing["harness"] = time.perf_counter() - t
    if plan.prompts:
        t = time.perf_counter()
        gen_conds = {"base": [], "core top-1% zeroed": parse_spec(f"mask={plan.mask}"), **{k: v for k, v in conditions.items() if v}}
        gens = generate(lm.model, lm.tokenizer, plan.prompts, gen_conds, max_new_tokens=20)
        write_json(out / "generations.json", {"conditions": {k: [p.to_dict() for p in v] for k, v in gen_conds.items()}, "generations": gens})
        timing["generate"] = time.perf_counter() - t
    return timing


def _load(out: Path, name: str) -> Any:
    return read_json(out / name)


def _split(scan: dict, prefix: str = "") -> tuple[list[float], list[float]]:
    """Geo-mean ratios of the top-dimension and random-dimension candidates (labels `[prefix]top:dN`)."""
    top = [r["geomean_ratio"] for r in scan["rows"] if r["label"].startswith(prefix) and ":top:" in f":{r['label']}"]
    rnd = [r["geomean_ratio"] for r in scan["rows"] if r["label"].startswith(prefix) and ":random:" in f":{r['label']}"]
    return top, rnd


def _norms(scan: dict) -> list[str]:
    """The norm tensors of a single-parameter scan, in the order a decoder layer applies them."""
    return sorted(dict.fromkeys(r["label"].split(":")[0] for r in scan["rows"]), key=lambda n: NORM_ORDER.index(n) if n in NORM_ORDER else len(NORM_ORDER))


def _strongest(scan: dict, norm: str) -> dict:
    """The highest-ranked candidate of one norm tensor (rows are ranked by effect)."""
    return next(x for x in scan["rows"] if x["label"].startswith(norm + ":"))


def _scan_table(scan: dict, n_top: int, label_fn) -> str:
    from tabulate import tabulate

    from lm_eval_lingreg.report import fmt_short as fmt

    langs = scan["langs"]
    rows = [[r["rank"], label_fn(r["label"]), *(fmt(r["ratio"][iso]) for iso in langs), fmt(r["geomean_ratio"])] for r in scan["rows"][:n_top]]
    return tabulate(rows, headers=["rank", "candidate", *(f"x ppl {iso}" for iso in langs), "geo-mean"], tablefmt="github")


def section(out: Path, record: dict[str, Any]) -> str:
    """The dimensions page (markdown) from the results under `out`."""
    plan = Plan(**record["plan"])
    timing = record["seconds"]
    dims, sd, sp = _load(out, "dims.json"), _load(out, "scan-dimension.json"), _load(out, "scan-parameter.json")
    L: list[str] = []
    w = L.append
    w("# Dimensional dependence on the bundled model (finding 2)\n")
    w(
        "The paper reports that the core linguistic region concentrates on a few hidden dimensions and that perturbing a "
        "single parameter on such a dimension destroys linguistic competence: multiplying by 4 the layer-1 parameter at "
        "dimension 2100 of LLaMA-2 gives Chinese perplexity 257.7, the same on dimension 4200 gives 5.858. Gemma-3-270M "
        "(hidden size 640, 18 layers) has no dimension 2100, so the tools below find this model's own dimensions from its "
        "core region; nothing here is taken from the paper except the experiment.\n"
    )
    w(
        f"Regenerate everything with `{record['command']}` (about {sum(timing.values()) / 60:.0f} min on 2 CPU cores; "
        f"`--from-results` rewrites this page from the JSON in `{out}/`). Each step is also one `lingreg` command, shown with it.\n"
    )
    _counts_part(w, dims)
    _dimension_scan_part(w, sd, timing, plan)
    gain = (out / "scan-parameter-gain.json").is_file()
    _parameter_scan_part(w, sp, timing, plan, gain)
    if gain:
        _gain_part(w, sp, _load(out, "scan-parameter-gain.json"), timing, plan)
    if (out / "chosen.json").is_file():
        chosen = {k: v["spec"] for k, v in _load(out, "chosen.json").items()}
        if (out / "harness").is_dir():
            _harness_part(w, out, chosen, timing, plan)
        if (out / "generations.json").is_file():
            _generations_part(w, _load(out, "generations.json"), chosen, plan)
    _conclusions(w, dims, sd, sp, gain)
    return "\n".join(L) + "\n"


def _counts_part(w, dims: dict) -> None:
    from tabulate import tabulate

    w("## 1. The core region concentrates on a few dimensions\n")
    w("    lingreg dims core-top-1 --top 20 --activations --plot dims.png --json dims.json\n")
    w(
        f"A hidden dimension has {dims['entries_per_dim']:,} entries across the {dims['layers']} layers (norm entries, columns of q/k/v/gate/up, rows of o/down). "
        f"With the region's 1% spread evenly, each would hold about {dims['entries_per_dim'] / 100:,.0f}; the mean is {dims['mean_per_dim']:.0f} "
        f"and the median {dims['median_per_dim']:.0f}. The top dimensions hold far more:\n"
    )
    acts = "activations" in dims
    rows = [
        [
            i,
            r["dim"],
            f"{r['total']:,}",
            f"{r['share']:.1%}",
            f"{r['total'] / dims['median_per_dim']:.0f}x",
            r["norm"],
            r["read"],
            r["write"],
            ", ".join(f"L{k}" for k in r["top_layers"]),
            *([f"{r['mean_abs_activation']:.3g}", r["activation_rank"]] if acts else []),
        ]
        for i, r in enumerate(dims["dims"][:12], 1)
    ]
    headers = ["rank", "dim", "region entries", "share of the dim", "x median dim", "norm", "cols read", "rows written", "densest layers"]
    w(tabulate(rows, headers=headers + (["mean abs act", "act rank"] if acts else []), tablefmt="github"))
    if acts:
        act = dims["activations"]
        top_act = dims["activations_top"][:5]
        in_top20 = [d for d in top_act if d in [r["dim"] for r in dims["dims"][:20]]]
        w(
            f"\nMean |hidden state| per dimension was measured on {act['texts']} eld calibration sentences ({act['tokens']} tokens) of the six core languages. "
            f"The largest is {act['max_over_median']:.0f}x the median (massive activations). Of the 5 dimensions with the largest activations ({', '.join(map(str, top_act))}), "
            f"{len(in_top20)} are among the region's top 20 dimensions.\n"
        )
    else:
        w("")
    w(f"![entries per dimension](figures/{FIGURE})\n")


def _dimension_scan_part(w, sd: dict, timing: dict, plan: Plan) -> None:
    from lm_eval_lingreg.report import fmt_short as fmt

    base_ppl = ", ".join(f"{iso} {v:.3g}" for iso, v in sd["base_perplexity"].items())
    langs = ", ".join(sd["langs"])
    top, rnd = _split(sd)
    w(f"## 2. Multiplying one dimension of layer {plan.layer} by {plan.value:g}\n")
    w(f"    lingreg scan --layer {plan.layer} --op mul --value {plan.value:g} --dims top:{plan.top},random:{plan.random} --langs {langs.replace(', ', ',')}\n")
    w(
        f"Every layer-{plan.layer} entry on the dimension is multiplied by {plan.value:g} (4 norm entries, its column in q/k/v/gate/up and its row in o/down: "
        f"{sd['rows'][0]['entries_changed']:,} entries). "
        f"Probe: the first {plan.docs} UDHR sections of {langs}, {plan.tokens} tokens each; token perplexity relative to the unperturbed model ({base_ppl}). "
        f"Random dimensions are drawn (seed 0) from those outside the top {max(plan.top, 20)}. {timing['scan_dimension']:.0f} s for the {len(sd['rows'])} runs.\n"
    )
    w(
        f"- top {len(top)} region dimensions: median x{fmt(statistics.median(top))}, max x{fmt(max(top))}; {sum(t > max(rnd) for t in top)} of {len(top)} above the worst random one"
    )
    w(f"- {len(rnd)} random dimensions: median x{fmt(statistics.median(rnd))}, max x{fmt(max(rnd))}\n")
    w(
        "Multiplying a whole dimension touches thousands of entries, so random dimensions are not harmless either; "
        "the top region dimensions are still orders of magnitude worse. The 15 strongest:\n"
    )
    w(_scan_table(sd, 15, lambda s: s.replace("top:", "top ").replace("random:", "random ").replace(":d", " d")))
    w("")


def _parameter_scan_part(w, sp: dict, timing: dict, plan: Plan, gain: bool) -> None:
    from tabulate import tabulate

    from lm_eval_lingreg.report import fmt_short as fmt

    norms = _norms(sp)
    strongest = sp["rows"][0]["label"].split(":")[0]
    k = min(plan.param_top, plan.top)
    w(f"## 3. Multiplying a single parameter by {plan.value:g}\n")
    w(f"    lingreg scan --param model.layers.{plan.layer}.{strongest}.weight --op mul --value {plan.value:g} --dims top:{k},random:{k}\n")
    w(
        f"One entry of one layer-{plan.layer} norm weight (Gemma-3 has four per layer), at the top {k} region dimensions and at {k} random "
        f"dimensions; {len(sp['rows'])} runs in {timing['scan_parameter']:.0f} s. This is the paper's experiment: one changed parameter. "
        f"Here the stored weight w is multiplied (`on=param`, the default); Gemma-3 norms compute `x * (1 + w)`, so the gain becomes "
        f"1 + {plan.value:g}w, not {plan.value:g}(1 + w) as it would on LLaMA-2, whose norms compute `x * w`."
        + (" Section 3b multiplies the gain." if gain else "")
        + "\n"
    )
    rows = []
    for norm in norms:
        t, r = _split(sp, norm)
        best = _strongest(sp, norm)
        rows.append([norm, fmt(statistics.median(t)), fmt(max(t)), fmt(statistics.median(r)), fmt(max(r)), best["label"].split(":", 1)[1].replace(":", " ")])
    w(
        tabulate(
            rows,
            headers=[f"layer-{plan.layer} parameter", f"top-{k} dims: median x", "max x", f"random-{k} dims: median x", "max x", "strongest"],
            tablefmt="github",
        )
    )
    w("\nThe 10 strongest single-parameter perturbations:\n")
    w(_scan_table(sp, 10, lambda s: s.replace(":top:", " top ").replace(":random:", " random ").replace(":d", " d")))
    w("")


def _gain_part(w, sp: dict, sg: dict, timing: dict, plan: Plan) -> None:
    """The single-parameter scan with on=gain beside the one on the stored weight."""
    from tabulate import tabulate

    from lm_eval_lingreg.report import fmt_short as fmt

    norms = _norms(sg)
    strongest = sg["rows"][0]
    k = min(plan.param_top, plan.top)
    w(f"### 3b. The same on the gain (`on=gain`): the paper's x{plan.value:g} of a norm's gain\n")
    w(
        f"    lingreg scan --param model.layers.{plan.layer}.{strongest['label'].split(':')[0]}.weight --op mul --value {plan.value:g} --on gain "
        f"--dims top:{k},random:{k}\n"
    )
    w(
        f"The same {len(sg['rows'])} candidates with the effective gain multiplied: the stored weight becomes {plan.value:g}(1 + w) - 1. "
        f"{timing.get('scan_parameter_gain', 0):.0f} s. Geometric mean over {', '.join(sg['langs'])} of the perplexity ratio:\n"
    )
    rows = []
    for norm in norms:
        pt, pr = _split(sp, norm)
        gt, gr = _split(sg, norm)
        best = _strongest(sg, norm)
        rows.append(
            [
                norm,
                fmt(max(pt)),
                fmt(max(gt)),
                fmt(statistics.median(pt)),
                fmt(statistics.median(gt)),
                fmt(max(pr)),
                fmt(max(gr)),
                best["label"].split(":", 1)[1].replace(":", " "),
            ]
        )
    w(
        tabulate(
            rows,
            headers=[
                f"layer-{plan.layer} parameter",
                f"top-{k} max x, on=param",
                "on=gain",
                f"top-{k} median x, on=param",
                "on=gain",
                f"random-{k} max x, on=param",
                "on=gain",
                "strongest on=gain",
            ],
            tablefmt="github",
        )
    )
    w(
        f"\nStrongest with `on=gain`: {strongest['label'].replace(':top:', ' top ').replace(':random:', ' random ').replace(':d', ' d')}, "
        f"x{fmt(strongest['geomean_ratio'])}; with `on=param`: {sp['rows'][0]['label'].replace(':top:', ' top ').replace(':random:', ' random ').replace(':d', ' d')}, "
        f"x{fmt(sp['rows'][0]['geomean_ratio'])}.\n"
    )


def _harness_part(w, out: Path, chosen: dict[str, str], timing: dict, plan: Plan) -> None:
    from tabulate import tabulate

    from lm_eval_lingreg.report import fmt_short as fmt
    from lm_eval_lingreg.results import geomean, per_language

    harness = {c: _load(out / "harness" / c, "results.json") for c in ["base", *chosen]}
    w(f"## 4. Across the {len(plan.harness_langs)} languages (lm-eval harness)\n")
    w(f"    lm_eval --model hf-perturbed --model_args {chosen['param-top'].replace(':', ',')} --tasks lingreg_ppl\n")
    w(
        f"The strongest single-parameter perturbation and the strongest whole-dimension one from the scans, each with the strongest random-dimension "
        f"control of the same kind, through `lingreg_ppl` ({plan.harness_limit} UDHR documents per language, token perplexity divided by the unperturbed model's). "
        f"{timing['harness'] / 60:.1f} min for the {len(harness)} conditions.\n"
    )
    from lm_eval_lingreg import experiments

    w(experiments.convention_note(out / "harness" / "base" / "results.json", "dimensions", "DIMENSIONS.md", 20))
    for k, spec in chosen.items():
        w(f"- `{k}`: `{spec}`")
    w("")
    ppl = {c: per_language(r, "token_perplexity") for c, r in harness.items()}
    conds = list(chosen)
    langs = plan.harness_langs
    rows = [[LANGUAGES[iso].name, fmt(ppl["base"][iso]), *(fmt(ppl[c][iso] / ppl["base"][iso]) for c in conds)] for iso in langs]
    ratios = {c: [ppl[c][iso] / ppl["base"][iso] for iso in langs] for c in conds}
    rows.append(["Geometric mean", "", *(fmt(geomean(ratios[c])) for c in conds)])
    rows.append(["Languages above x10", "", *(str(sum(x > 10 for x in ratios[c])) for c in conds)])
    w(tabulate(rows, headers=["language", "base tok-ppl", *(f"x {c}" for c in conds)], tablefmt="github"))
    w("")


def _generations_part(w, gens: dict, chosen: dict[str, str], plan: Plan) -> None:
    from tabulate import tabulate

    w("## 5. Generations (greedy, 20 new tokens)\n")
    w(f'    lingreg generate --prompt "{plan.prompts[0]}" --compare "base,mask={plan.mask},{chosen["param-top"]}"\n')
    order = {p: i for i, p in enumerate(plan.prompts)}
    rows = [
        [
            g["prompt"],
            g["condition"],
            g["continuation"].replace("\n", " ⏎ ").replace("|", "\\|") if g["continuation"].strip() else "(nothing: end of text or whitespace only)",
        ]
        for g in sorted(gens["generations"], key=lambda g: order[g["prompt"]])
    ]
    w(tabulate(rows, headers=["prompt", "condition", "continuation"], tablefmt="github"))
    w("")


def _conclusions(w, dims: dict, sd: dict, sp: dict, gain: bool) -> None:
    from lm_eval_lingreg.report import fmt_short as fmt

    pt, pr = _split(sp)
    dt, dr = _split(sd)
    w("## What this shows, and how it differs from the paper\n")
    w(
        f"- The core region is concentrated: its top dimension holds {dims['dims'][0]['total'] / dims['median_per_dim']:.0f}x the region entries of the median dimension"
        + (", and the dimensions with massive activations are among its densest." if "activations_top" in dims else ".")
    )
    w(
        f"- One parameter is enough on this model too: the strongest single layer-1 norm entry multiplied by 4 gives x{fmt(max(pt))} "
        f"(geometric mean over {'/'.join(sp['langs'])}), while the same on {len(pr) // max(1, len({r['label'].split(':')[0] for r in sp['rows']}))} random dimensions of the same four tensors stays at most x{fmt(max(pr))} (median x{fmt(statistics.median(pr))})."
    )
    best_dim = int(sp["rows"][0]["label"].rsplit(":d", 1)[1])
    ranked = [r["dim"] for r in dims["dims"]]
    dim_rank = ranked.index(best_dim) + 1 if best_dim in ranked else None
    w(
        f"- The most fragile parameter sits on dimension {best_dim}, ranked {dim_rank} of {dims['hidden_size']} by region entries"
        + (" (and among the largest activations)" if best_dim in dims.get("activations_top", [])[:10] else "")
        + ": ranking by region entries gives the candidates, the scan finds which of them break the model."
    )
    w(
        f"- Not every top dimension is fragile: the median top-{len(pt) // max(1, len({r['label'].split(':')[0] for r in sp['rows']}))} single-parameter effect is x{fmt(statistics.median(pt))}. Which norm matters differs by dimension "
        "(see the table in section 3), so `lingreg scan` over all four norms is the way to find them."
    )
    w(
        f"- Whole-dimension perturbations are blunter: random dimensions reach up to x{fmt(max(dr))} since thousands of entries change, but top dimensions reach x{fmt(max(dt))}."
    )
    w(
        "- The paper measured LLaMA-2 (hidden 4096) with its own probe set; our numbers are for Gemma-3-270M on UDHR. Perplexity ratios are not comparable "
        "in magnitude across models, only the contrast between region dimensions and random dimensions is."
    )
    w(
        f"- Gemma-3 norms compute `x * (1 + w)`. Everything above{' except section 3b' if gain else ''} multiplies the stored parameter `w` "
        "(the default, `on=param`); `on=gain` multiplies the effective gain `1 + w` instead, which is what x4 means on LLaMA-2's `x * w` norms.\n"
    )
