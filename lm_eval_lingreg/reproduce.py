"""`lingreg reproduce`: the paper's experiments on the bundled model, in one process, with a report.

Findings 1 and 3 (core / bottom / random regions at the shipped ratios, monolingual regions)
through the harness; finding 2 (the dimensions the core region concentrates on, and one
perturbation per candidate dimension); finding 4 (further pre-training with the core region
frozen). Results JSON go under `<out>/results/`, figures beside the report, and the report
(markdown) states the commands and the wall time of every phase.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lm_eval_lingreg._atomic import atomic_path, write_json
from lm_eval_lingreg.languages import LANGUAGES
from lm_eval_lingreg.report import fmt_short


@dataclass
class Plan:
    """How big each phase is."""

    langs: list[str]
    limit: int | None
    ratios: list[int]
    mono: list[str]
    scan_top: int
    scan_random: int
    scan_langs: list[str]
    scan_docs: int
    scan_tokens: int
    forget_steps: int
    forget_eval_langs: list[str]
    forget_eval_limit: int | None
    forget_conditions: list[str] = field(default_factory=lambda: ["none", "core:0.05", "random:0.05"])
    forget_lang: str = "ko"


FULL = Plan(
    langs=list(LANGUAGES), limit=2, ratios=[1, 3, 5], mono=["ar", "es", "ru", "zh", "ko", "vi"],
    scan_top=20, scan_random=20, scan_langs=["en", "zh", "ar", "ru"], scan_docs=2, scan_tokens=128,
    forget_steps=80, forget_eval_langs=list(LANGUAGES), forget_eval_limit=2,
)
QUICK = Plan(
    langs=["en", "zh", "ar", "es", "ja", "sw"], limit=1, ratios=[1], mono=["ar", "zh"],
    scan_top=4, scan_random=4, scan_langs=["en", "zh"], scan_docs=1, scan_tokens=48,
    forget_steps=3, forget_eval_langs=["en", "ko", "zh"], forget_eval_limit=1,
)


def run(out: Path, plan: Plan, log=print) -> dict[str, Any]:
    """Run every phase on the bundled model; return timings and where the results are."""
    from lm_eval_lingreg.dimensions import dimension_counts, plot_dimensions
    from lm_eval_lingreg.evaluation import evaluate_conditions
    from lm_eval_lingreg.models import RegionAblatedLM
    from lm_eval_lingreg.perturbation import Perturbation, hidden_size, residual_slots
    from lm_eval_lingreg.region_io import load_region
    from lm_eval_lingreg.regions import named_parameters
    from lm_eval_lingreg.scan import ProbeSet, probe_texts, random_dims, scan
    from lm_eval_lingreg.training import TrainConfig, forget, plot_curves

    res = out / "results"
    times: dict[str, float] = {}
    t = time.perf_counter()
    lm = RegionAblatedLM(device="cpu", dtype="float32", batch_size=1)
    times["load"] = time.perf_counter() - t

    t = time.perf_counter()
    masks = [f"core-{w}-{r}" for r in plan.ratios for w in ("top", "bottom", "random")] + [f"mono-{iso}-1" for iso in plan.mono]
    log(f"[1/3] regions: base + {len(masks)} masks on {len(plan.langs)} languages x {plan.limit or 31} documents")
    evaluate_conditions(lm, {"base": None, **{m: load_region(m) for m in masks}}, plan.langs, limit=plan.limit, output_dir=res / "regions")
    times["regions"] = time.perf_counter() - t

    t = time.perf_counter()
    log("[2/3] dimensions: region counts and one perturbation per candidate dimension")
    dc = dimension_counts(load_region("core-top-1"))
    write_json(res / "dims.json", dc.to_json(20))
    plot_dimensions(dc, str(out / "figures" / "dims.png"), top=12)
    ranked = dc.ranked()
    top, rnd = ranked[: plan.scan_top], random_dims(dc.hidden, plan.scan_random, ranked[: max(plan.scan_top, 20)], seed=0)
    probe = ProbeSet.build(lm.tokenizer, probe_texts(plan.scan_langs, plan.scan_docs), plan.scan_tokens)
    dim_cands = [(f"{k}:d{d}", [Perturbation(op="mul", value=4.0, dims=(d,), layers=(1,))]) for k, ds in (("top", top), ("random", rnd)) for d in ds]
    write_json(res / "scan-dimension.json", scan(lm.model, probe, dim_cands))
    slots, _ = residual_slots({n: tuple(p.shape) for n, p in named_parameters(lm.model).items()}, hidden_size(lm.model))
    norms = [s.name for s in slots.values() if s.layer == 1 and s.role == "norm"]
    few = min(10, plan.scan_top)  # single entries: the top 10 and 10 random dimensions per norm tensor
    param_cands = [(f"{n.split('.')[-2]}:{k}:d{d}", [Perturbation(op="mul", value=4.0, param=n, index=d)]) for n in norms for k, ds in (("top", top[:few]), ("random", rnd[:few])) for d in ds]
    write_json(res / "scan-parameter.json", scan(lm.model, probe, param_cands))
    times["dimensions"] = time.perf_counter() - t

    t = time.perf_counter()
    log(f"[3/3] forgetting: {plan.forget_steps} steps on {plan.forget_lang} under {', '.join(plan.forget_conditions)}")
    cfg = TrainConfig(lang=plan.forget_lang, steps=plan.forget_steps, seq_len=64, eval_every=max(1, plan.forget_steps // 4), train_scope=r"layers\.\d+\.",
                      eval_langs=["en", "zh", "ar"], eval_blocks=8 if plan is FULL else 2)
    summary = forget(lm, cfg, plan.forget_conditions, plan.forget_eval_langs, plan.forget_eval_limit, res / "forget", log=log)
    plot_curves(summary, out / "figures" / "forget-curves.png")
    times["forgetting"] = time.perf_counter() - t
    meta = {"plan": asdict(plan), "seconds": {k: round(v, 1) for k, v in times.items()}}
    write_json(res / "reproduce.json", meta)
    return meta


def write_report(out: Path, doc: Path, command: str) -> None:
    """The markdown report from the results under `out` (figures are written next to `doc`)."""
    from tabulate import tabulate

    from lm_eval_lingreg.region_io import load_region
    from lm_eval_lingreg.report import apply_rules, build_table, load_rules, load_runs, plot_heatmap, plot_region_density, render_table
    from lm_eval_lingreg.resources import baselines_dir

    res = out / "results"
    meta = json.loads((res / "reproduce.json").read_text())
    plan, secs = meta["plan"], meta["seconds"]
    figs = doc.parent / "figures" / "reproduction"
    runs = load_runs([res / "regions"])
    plot_heatmap(runs, figs / "heatmap.png")
    plot_region_density(load_region("core-top-1"), figs / "density-core-top-1.png")
    for name in ("dims.png", "forget-curves.png"):
        src = out / "figures" / name
        if src != figs / name:
            figs.mkdir(parents=True, exist_ok=True)
            (figs / name).write_bytes(src.read_bytes())
    rel = figs.relative_to(doc.parent)
    L: list[str] = []
    w = L.append
    w("# Reproducing the paper on the bundled model\n")
    w(f"Generated by `{command}` on Gemma-3-270M (CPU, float32). Wall time: {sum(secs.values()) / 60:.1f} min "
      f"({', '.join(f'{k} {v / 60:.1f} min' for k, v in secs.items())}). Raw results: `{res}`.\n")
    w(f"Harness: `lingreg_ppl`, {len(plan['langs'])} languages x {plan['limit'] or 31} UDHR documents; token perplexity divided by the unchanged model's.\n")

    w("## Finding 1: the core region\n")
    df = build_table([r for r in runs if not r.label.startswith("mono-")], "token_perplexity", ratio_to="base")
    w(render_table(df.drop(columns=["base"])))
    w("")
    checks = apply_rules(runs, load_rules(baselines_dir() / "rules-bundled.yaml"))
    bad = [c for c in checks if not c["ok"]]
    w(f"Expectations (`baselines/rules-bundled.yaml`, as `lingreg check` applies them): {len(checks) - len(bad)} of {len(checks)} hold"
      + (": " + "; ".join(f"{c['rule']}: {c['run']} {c['language']} = {fmt_short(c['value'])}" for c in bad[:5]) if bad else "") + ".\n")
    w(f"![ratio heatmap]({rel}/heatmap.png) ![core density]({rel}/density-core-top-1.png)\n")

    mono = [r for r in runs if r.label.startswith("mono-")]
    if mono:
        w("## Finding 3: monolingual regions\n")
        dfm = build_table([r for r in runs if r.label == "base"] + mono, "token_perplexity", ratio_to="base")
        rows = []
        for r in mono:
            own = r.label.split("-")[1]
            col = dfm[r.label].iloc[:-1]
            others = [v for i, v in col.items() if not i.endswith(f"({own})")]
            own_v = float(col[[i for i in col.index if i.endswith(f"({own})")][0]]) if any(i.endswith(f"({own})") for i in col.index) else math.nan
            rank = 1 + sum(v > own_v for v in others)
            rows.append([r.label, fmt_short(own_v), fmt_short(statistics.median(others)), fmt_short(own_v / statistics.median(others)), f"{rank} of {len(col)}"])
        w(tabulate(rows, headers=["region", "x ppl own language", "x ppl others (median)", "own / median other", "own language rank"], tablefmt="github"))
        w("")

    w("## Finding 2: dimensional dependence\n")
    sd = json.loads((res / "scan-dimension.json").read_text())
    sp = json.loads((res / "scan-parameter.json").read_text())
    dims = json.loads((res / "dims.json").read_text())
    w(f"Top dimensions of the core top-1% region by entries: {', '.join(str(r['dim']) for r in dims['dims'][:10])} "
      f"(the densest holds {dims['dims'][0]['total'] / dims['median_per_dim']:.0f}x the median dimension).\n")
    w(f"![dimensions]({rel}/dims.png)\n")
    for title, scan_ in (("Every layer-1 entry on the dimension multiplied by 4", sd), ("One layer-1 norm entry multiplied by 4", sp)):
        top = [r["geomean_ratio"] for r in scan_["rows"] if ":top:" in f":{r['label']}"]
        rnd = [r["geomean_ratio"] for r in scan_["rows"] if ":random:" in f":{r['label']}"]
        w(f"**{title}** ({', '.join(scan_['langs'])}; geometric mean of perplexity ratios): top region dimensions max x{fmt_short(max(top))}, "
          f"median x{fmt_short(statistics.median(top))}; random dimensions max x{fmt_short(max(rnd))}, median x{fmt_short(statistics.median(rnd))}. Strongest:\n")
        w(tabulate([[r["label"], fmt_short(r["geomean_ratio"])] for r in scan_["rows"][:5]], headers=["candidate", "x ppl (geo-mean)"], tablefmt="github"))
        w("")

    w("## Finding 4: freezing the core region during further pre-training\n")
    s = json.loads((res / "forget" / "summary.json").read_text())
    f = s["forgetting"]
    rows = [[c, (s["frozen"][c] or {}).get("entries", 0), fmt_short(f[c]["target_ratio"]), fmt_short(f[c]["others_geomean_ratio"]), f"{fmt_short(f[c]['others_max_ratio'])} ({f[c]['others_worst']})"]
            for c in s["conditions"]]
    w(f"{s['config']['steps']} steps on {LANGUAGES[s['target']].name}, lr {s['config']['lr']:g}; harness on {len(s['before'])} languages before and after.\n")
    w(tabulate(rows, headers=["condition", "frozen entries", f"x ppl {s['target']} (target)", "x ppl others (geo-mean)", "x ppl others (max)"], tablefmt="github"))
    w(f"\n![curves]({rel}/forget-curves.png)\n")
    w("## Regenerate\n")
    w(f"    {command}\n")
    w("The same phases, one at a time: `lingreg demo`, `lingreg dims`, `lingreg scan`, `lingreg forget`; tables from any results folder with `lingreg table`.\n")
    with atomic_path(doc) as tmp:
        tmp.write_text("\n".join(L) + "\n", encoding="utf-8")
