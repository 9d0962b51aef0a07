"""Reproduce finding 2 (dimensional dependence) on the bundled model and write docs/DIMENSIONS.md.

    python scripts/dimension_report.py [--eval-limit 2] [--from-results]

One model load, then:
1. `lingreg dims`: which hidden dimensions the shipped core top-1% region concentrates on, with
   the mean |activation| of every dimension on calibration text (eld sentences, 6 languages).
2. `lingreg scan`, whole dimension: multiply by 4 every layer-1 entry on a dimension (norm
   entries, columns read, rows written), for the top 20 region dimensions and 20 random ones.
3. `lingreg scan`, single parameter: multiply by 4 one entry of each layer-1 norm weight, top 10
   vs random 10 dimensions.
4. The harness (`lingreg_ppl`, 30 languages) on the strongest single-parameter and
   whole-dimension perturbations and on their strongest random-dimension controls.
5. Greedy generations under those conditions and with the core region zeroed.
All results JSON go to docs/results/dimensions/; `--from-results` rewrites the report from them.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

from lm_eval_lingreg._atomic import write_json
from lm_eval_lingreg.report import fmt_short as fmt

ROOT = Path(__file__).resolve().parent.parent
PROBE_LANGS = ["en", "zh", "ar", "ru"]
NORMS = ["input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm"]
PROMPTS = ["Fudan University is located in", "复旦大学位于", "There are 365 days in a year and 12", "Москва — столица"]



def run(args: argparse.Namespace) -> None:
    from lm_eval_lingreg.corpora import read_texts
    from lm_eval_lingreg.dimensions import dimension_counts, mean_abs_activations, plot_dimensions
    from lm_eval_lingreg.evaluation import evaluate_conditions
    from lm_eval_lingreg.languages import CORE_LANGUAGES, LANGUAGES
    from lm_eval_lingreg.models import RegionAblatedLM
    from lm_eval_lingreg.perturbation import Perturbation
    from lm_eval_lingreg.region_io import load_region
    from lm_eval_lingreg.scan import ProbeSet, generate, probe_texts, random_dims, scan

    out = args.results
    timing: dict[str, float] = {}
    t = time.perf_counter()
    lm = RegionAblatedLM(device="cpu", dtype="float32", batch_size=1)
    model, tok = lm.model, lm.tokenizer
    timing["load"] = time.perf_counter() - t

    t = time.perf_counter()
    dc = dimension_counts(load_region(args.mask))
    texts = [s for iso in CORE_LANGUAGES for s in read_texts(iso)[0][:8]]
    acts = mean_abs_activations(model, tok, texts)
    dims = dc.to_json(20, acts)
    dims["activations_top"] = acts["top"]
    write_json(out / "dims.json", dims)
    plot_dimensions(dc, str(ROOT / "docs" / "figures" / "dims-core-top-1.png"), top=12, title="Core top-1% region of Gemma-3-270M: entries per hidden dimension")
    timing["dims"] = time.perf_counter() - t

    ranked = dc.ranked()
    top20, rand20 = ranked[:20], random_dims(dc.hidden, 20, ranked[:20], seed=0)
    probe = ProbeSet.build(tok, probe_texts(PROBE_LANGS, 2), 128)

    t = time.perf_counter()
    cands = [(f"{k}:d{d}", [Perturbation(op="mul", value=4.0, dims=(d,), layers=(1,))]) for k, ds in (("top", top20), ("random", rand20)) for d in ds]
    scan_dim = scan(model, probe, cands)
    write_json(out / "scan-dimension.json", scan_dim)
    timing["scan_dimension"] = time.perf_counter() - t

    t = time.perf_counter()
    top10, rand10 = ranked[:10], rand20[:10]
    cands = [
        (f"{norm}:{k}:d{d}", [Perturbation(op="mul", value=4.0, param=f"model.layers.1.{norm}.weight", index=d)])
        for norm in NORMS for k, ds in (("top", top10), ("random", rand10)) for d in ds
    ]
    scan_param = scan(model, probe, cands)
    write_json(out / "scan-parameter.json", scan_param)
    timing["scan_parameter"] = time.perf_counter() - t

    def best(rows, kind):
        return next(r for r in rows if f"{kind}:d" in r["label"])

    chosen = {
        "param-top": best(scan_param["rows"], "top"),
        "param-random": best(scan_param["rows"], "random"),
        "dim-top": best(scan_dim["rows"], "top"),
        "dim-random": best(scan_dim["rows"], "random"),
    }
    from lm_eval_lingreg.perturbation import parse_spec

    conditions = {"base": None, **{k: parse_spec(r["spec"]) for k, r in chosen.items()}}
    t = time.perf_counter()
    evaluate_conditions(lm, conditions, list(LANGUAGES), limit=args.eval_limit, output_dir=out / "harness")
    timing["harness"] = time.perf_counter() - t
    write_json(out / "chosen.json", {k: {"label": r["label"], "spec": r["spec"]} for k, r in chosen.items()})

    t = time.perf_counter()
    gen_conds = {"base": [], "core top-1% zeroed": parse_spec("mask=core-top-1"), **{k: v for k, v in conditions.items() if v}}
    gens = generate(model, tok, PROMPTS, gen_conds, max_new_tokens=20)
    write_json(out / "generations.json", {"conditions": {k: [p.to_dict() for p in v] for k, v in gen_conds.items()}, "generations": gens})
    timing["generate"] = time.perf_counter() - t
    write_json(out / "TIMING.json", {k: round(v, 1) for k, v in timing.items()} | {"eval_limit": args.eval_limit})


def report(args: argparse.Namespace) -> str:
    from tabulate import tabulate

    from lm_eval_lingreg.evaluation import per_language
    from lm_eval_lingreg.languages import LANGUAGES

    res = args.results
    dims = json.loads((res / "dims.json").read_text())
    sd = json.loads((res / "scan-dimension.json").read_text())
    sp = json.loads((res / "scan-parameter.json").read_text())
    chosen = json.loads((res / "chosen.json").read_text())
    gens = json.loads((res / "generations.json").read_text())
    timing = json.loads((res / "TIMING.json").read_text())
    harness = {c: json.loads((res / "harness" / c / "results.json").read_text()) for c in ["base", *chosen]}
    L: list[str] = []
    w = L.append

    w("# Dimensional dependence on the bundled model (finding 2)\n")
    w("The paper reports that the core linguistic region concentrates on a few hidden dimensions and that perturbing a "
      "single parameter on such a dimension destroys linguistic competence: multiplying by 4 the layer-1 parameter at "
      "dimension 2100 of LLaMA-2 gives Chinese perplexity 257.7, the same on dimension 4200 gives 5.858. Gemma-3-270M "
      "(hidden size 640, 18 layers) has no dimension 2100, so the tools below find this model's own dimensions from its "
      "core region; nothing here is taken from the paper except the experiment.\n")
    w(f"Regenerate everything with `python scripts/dimension_report.py` (about {sum(v for k, v in timing.items() if k != 'eval_limit') / 60:.0f} min on 2 CPU cores; "
      "`--from-results` rewrites this page from the JSON in `docs/results/dimensions/`). Each step is also one `lingreg` command, shown with it.\n")

    w("## 1. The core region concentrates on a few dimensions\n")
    w("    lingreg dims core-top-1 --top 20 --activations --plot dims.png --json dims.json\n")
    w(f"A hidden dimension has {dims['entries_per_dim']:,} entries across the 18 layers (norm entries, columns of q/k/v/gate/up, rows of o/down). "
      f"With the region's 1% spread evenly, each would hold about {dims['entries_per_dim'] / 100:,.0f}; the mean is {dims['mean_per_dim']:.0f} "
      f"and the median {dims['median_per_dim']:.0f}. The top dimensions hold far more:\n")
    rows = [[i, r["dim"], f"{r['total']:,}", f"{r['share']:.1%}", f"{r['total'] / dims['median_per_dim']:.0f}x", r["norm"], r["read"], r["write"],
             ", ".join(f"L{k}" for k in r["top_layers"]), f"{r['mean_abs_activation']:.3g}", r["activation_rank"]]
            for i, r in enumerate(dims["dims"][:12], 1)]
    w(tabulate(rows, headers=["rank", "dim", "region entries", "share of the dim", "x median dim", "norm", "cols read", "rows written", "densest layers", "mean abs act", "act rank"], tablefmt="github"))
    act = dims["activations"]
    top_act = dims["activations_top"][:5]
    in_top20 = [d for d in top_act if d in [r["dim"] for r in dims["dims"][:20]]]
    w(f"\nMean |hidden state| per dimension was measured on {act['texts']} eld calibration sentences ({act['tokens']} tokens) of the six core languages. "
      f"The largest is {act['max_over_median']:.0f}x the median (massive activations). Of the 5 dimensions with the largest activations ({', '.join(map(str, top_act))}), "
      f"{len(in_top20)} are among the region's top 20 dimensions.\n")
    w("![entries per dimension](figures/dims-core-top-1.png)\n")

    def scan_table(scan: dict, n_top: int, label_fn) -> str:
        langs = scan["langs"]
        rows = [[r["rank"], label_fn(r["label"]), *(fmt(r["ratio"][iso]) for iso in langs), fmt(r["geomean_ratio"])] for r in scan["rows"][:n_top]]
        return tabulate(rows, headers=["rank", "candidate", *(f"x ppl {iso}" for iso in langs), "geo-mean"], tablefmt="github")

    def summary(scan: dict, prefix: str = "") -> tuple[list[float], list[float]]:
        top = [r["geomean_ratio"] for r in scan["rows"] if r["label"].startswith(prefix) and ":top:" in f":{r['label']}"]
        rnd = [r["geomean_ratio"] for r in scan["rows"] if r["label"].startswith(prefix) and ":random:" in f":{r['label']}"]
        return top, rnd

    base_ppl = ", ".join(f"{iso} {v:.3g}" for iso, v in sd["base_perplexity"].items())
    w("## 2. Multiplying one dimension of layer 1 by 4\n")
    w("    lingreg scan --layer 1 --op mul --value 4 --dims top:20,random:20 --langs en,zh,ar,ru\n")
    w(f"Every layer-1 entry on the dimension is multiplied by 4 (4 norm entries, its column in q/k/v/gate/up and its row in o/down: "
      f"{sd['rows'][0]['entries_changed']:,} entries). "
      f"Probe: the first 2 UDHR sections of en, zh, ar, ru, 128 tokens each; token perplexity relative to the unperturbed model ({base_ppl}). "
      f"Random dimensions are drawn (seed 0) from those outside the top 20. {timing['scan_dimension']:.0f} s for the 40 runs.\n")
    top, rnd = summary(sd)
    w(f"- top 20 region dimensions: median x{fmt(statistics.median(top))}, max x{fmt(max(top))}; {sum(t > max(rnd) for t in top)} of 20 above the worst random one")
    w(f"- 20 random dimensions: median x{fmt(statistics.median(rnd))}, max x{fmt(max(rnd))}\n")
    w("Multiplying a whole dimension touches thousands of entries, so random dimensions are not harmless either; "
      "the top region dimensions are still orders of magnitude worse. The 15 strongest:\n")
    w(scan_table(sd, 15, lambda s: s.replace("top:", "top ").replace("random:", "random ").replace(":d", " d")))
    w("")

    w("## 3. Multiplying a single parameter by 4\n")
    strongest = sp["rows"][0]["label"].split(":")[0]
    w(f"    lingreg scan --param model.layers.1.{strongest}.weight --op mul --value 4 --dims top:10,random:10\n")
    w(f"One entry of one layer-1 norm weight (Gemma-3 has four per layer), at the top 10 region dimensions and at 10 random "
      f"dimensions; 80 runs in {timing['scan_parameter']:.0f} s. This is the paper's experiment: one changed parameter.\n")
    rows = []
    for norm in NORMS:
        t, r = summary(sp, norm)
        best = next(x for x in sp["rows"] if x["label"].startswith(norm + ":"))
        rows.append([norm, fmt(statistics.median(t)), fmt(max(t)), fmt(statistics.median(r)), fmt(max(r)), best["label"].split(":", 1)[1].replace(":", " ")])
    w(tabulate(rows, headers=["layer-1 parameter", "top-10 dims: median x", "max x", "random-10 dims: median x", "max x", "strongest"], tablefmt="github"))
    w("\nThe 10 strongest single-parameter perturbations:\n")
    w(scan_table(sp, 10, lambda s: s.replace(":top:", " top ").replace(":random:", " random ").replace(":d", " d")))
    w("")

    w("## 4. Across the 30 languages (lm-eval harness)\n")
    ch = {k: v["spec"] for k, v in chosen.items()}
    w(f"    lm_eval --model hf-perturbed --model_args {ch['param-top'].replace(':', ',')} --tasks lingreg_ppl\n")
    w(f"The strongest single-parameter perturbation and the strongest whole-dimension one from the scans, each with the strongest random-dimension "
      f"control of the same kind, through `lingreg_ppl` ({timing['eval_limit']} UDHR documents per language, token perplexity divided by the unperturbed model's). "
      f"{timing['harness'] / 60:.1f} min for the 5 conditions.\n")
    for k, spec in ch.items():
        w(f"- `{k}`: `{spec}`")
    w("")
    ppl = {c: per_language(r, "token_perplexity") for c, r in harness.items()}
    conds = list(chosen)
    rows = [[LANGUAGES[iso].name, fmt(ppl["base"][iso]), *(fmt(ppl[c][iso] / ppl["base"][iso]) for c in conds)] for iso in LANGUAGES]
    ratios = {c: [ppl[c][iso] / ppl["base"][iso] for iso in LANGUAGES] for c in conds}
    gm = [fmt(math.exp(statistics.fmean(math.log(x) for x in ratios[c]))) if all(math.isfinite(x) for x in ratios[c]) else "inf" for c in conds]
    rows.append(["Geometric mean", "", *gm])
    rows.append(["Languages above x10", "", *(str(sum(x > 10 for x in ratios[c])) for c in conds)])
    w(tabulate(rows, headers=["language", "base tok-ppl", *(f"x {c}" for c in conds)], tablefmt="github"))
    w("")

    w("## 5. Generations (greedy, 20 new tokens)\n")
    w(f"    lingreg generate --prompt \"Fudan University is located in\" --compare \"base,mask=core-top-1,{ch['param-top']}\"\n")
    rows = [[g["prompt"], g["condition"], g["continuation"].replace("\n", " ⏎ ").replace("|", "\\|") if g["continuation"].strip() else "(nothing: end of text or whitespace only)"] for g in sorted(gens["generations"], key=lambda g: PROMPTS.index(g["prompt"]))]
    w(tabulate(rows, headers=["prompt", "condition", "continuation"], tablefmt="github"))
    w("")

    w("## What this shows, and how it differs from the paper\n")
    pt, pr = summary(sp)
    dt, dr = summary(sd)
    w(f"- The core region is concentrated: its top dimension holds {dims['dims'][0]['total'] / dims['median_per_dim']:.0f}x the region entries of the median dimension, "
      f"and the dimensions with massive activations are among its densest.")
    w(f"- One parameter is enough on this model too: the strongest single layer-1 norm entry multiplied by 4 gives x{fmt(max(pt))} "
      f"(geometric mean over en/zh/ar/ru), while the same on 10 random dimensions of the same four tensors stays at most x{fmt(max(pr))} (median x{fmt(statistics.median(pr))}).")
    best_dim = int(sp["rows"][0]["label"].rsplit(":d", 1)[1])
    dim_rank = [r["dim"] for r in dims["dims"]].index(best_dim) + 1 if best_dim in [r["dim"] for r in dims["dims"]] else None
    w(f"- The most fragile parameter sits on dimension {best_dim}, ranked {dim_rank} of {dims['hidden_size']} by region entries"
      + (" (and among the largest activations)" if best_dim in dims["activations_top"][:10] else "")
      + ": ranking by region entries gives the candidates, the scan finds which of them break the model.")
    w(f"- Not every top dimension is fragile: the median top-10 single-parameter effect is x{fmt(statistics.median(pt))}. Which norm matters differs by dimension "
      "(see the table in section 3), so `lingreg scan` over all four norms is the way to find them.")
    w(f"- Whole-dimension perturbations are blunter: random dimensions reach up to x{fmt(max(dr))} since thousands of entries change, but top dimensions reach x{fmt(max(dt))}.")
    w("- The paper measured LLaMA-2 (hidden 4096) with its own probe set; our numbers are for Gemma-3-270M on UDHR. Perplexity ratios are not comparable "
      "in magnitude across models, only the contrast between region dimensions and random dimensions is.")
    w("- Gemma-3 norms compute `x * (1 + w)`. Everything above multiplies the stored parameter `w` (the default, `on=param`); "
      "`on=gain` multiplies the effective gain `1 + w` instead.\n")
    return "\n".join(L) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mask", default="core-top-1", help="region whose dimensions are analysed (default: shipped core-top-1)")
    ap.add_argument("--eval-limit", type=int, default=2, help="UDHR documents per language for the harness runs (default 2)")
    ap.add_argument("--from-results", action="store_true", help="only rewrite the report from the saved JSON")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "DIMENSIONS.md")
    ap.add_argument("--results", type=Path, default=ROOT / "docs" / "results" / "dimensions")
    args = ap.parse_args()
    if not args.from_results:
        run(args)
    from lm_eval_lingreg._atomic import atomic_path

    with atomic_path(args.out) as tmp:
        tmp.write_text(report(args), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
