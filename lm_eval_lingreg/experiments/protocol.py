"""The official scoring protocol beside the default one: how much the regions move, how many samples are enough.

The six core languages are scored three ways on the same model, with cumulative checkpoints:

- `default`: sentences (BOS + text), each sample's mean token loss, float32 accumulation;
- `paper-fp32`: the official preprocessing and loss (documents with BOS and EOS, longer than 512 tokens
  dropped; the Hugging Face mean over micro-batches of 8), float32 accumulation;
- `paper`: the same with gradients accumulated and saved in bfloat16, as the official DeepSpeed run.

From each: the core top region and the monolingual top and bottom regions at every checkpoint. The page
reports their Jaccard agreement (default vs paper, and float32 vs bfloat16 accumulation as samples grow),
their stability (each checkpoint against the final region), and the harness: the final regions of
`default` and `paper` ablated on the six languages (the shipped regions on all 30 are in docs/REGIONS.md), with
the bottom monolingual regions as selectivity controls.
Score files and region files stay in a cache folder (`scores_dir`), outside the results.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lm_eval_lingreg.bundled import DEFAULT_MODEL
from lm_eval_lingreg.evaluation import DEFAULT_LIMIT
from lm_eval_lingreg.experiments import read_json
from lm_eval_lingreg.languages import CORE_LANGUAGES, LANGUAGES

NAME = "protocol"

#: The scoring options of each protocol (besides samples, seed and the model).
PROTOCOLS: dict[str, dict[str, Any]] = {
    "default": {},
    "paper-fp32": {"unit": "documents", "seq_len": 512, "loss_norm": "batch-token", "batch_size": 8},
    "paper": {"unit": "documents", "seq_len": 512, "loss_norm": "batch-token", "batch_size": 8, "grad_dtype": "bfloat16"},
}
#: The protocols whose regions go through the harness.
EVALUATED = ("default", "paper")


@dataclass
class Plan:
    langs: list[str] = field(default_factory=lambda: list(CORE_LANGUAGES))
    samples: int = 200
    checkpoints: list[int] = field(default_factory=lambda: [24, 48, 96])  # multiples of the official micro-batch of 8
    ratio: float = 0.01
    eval_langs: list[str] = field(default_factory=lambda: list(CORE_LANGUAGES))
    limit: int | None = DEFAULT_LIMIT
    scores_dir: str | None = None  # default: <cache>/scores/protocol-<model fingerprint>


def _scores_root(lm: Any, plan: Plan) -> Path:
    from lm_eval_lingreg.anatomy import model_fingerprint
    from lm_eval_lingreg.resources import cache_dir

    return Path(plan.scores_dir) if plan.scores_dir else cache_dir() / "scores" / f"protocol-{model_fingerprint(lm.model)[:12]}-{plan.samples}"


def regions_of(scores_dir: Path, plan: Plan) -> dict[str, Any]:
    """{"core": Region, "mono-<iso>": Region, "mono-bottom-<iso>": Region} from one score set."""
    from lm_eval_lingreg.scores import ScoreSet
    from lm_eval_lingreg.selection import select_core, select_monolingual_all

    scores = ScoreSet(scores_dir, plan.langs)
    meta = scores.provenance()
    out = {"core": select_core(scores.get, scores.names, plan.langs, plan.ratio, metadata=meta)}
    for which, prefix in (("top", "mono"), ("bottom", "mono-bottom")):
        for iso, region in select_monolingual_all(scores.get, scores.names, plan.langs, plan.ratio, meta, which=which).items():
            out[f"{prefix}-{iso}"] = region
    return out


def run(lm: Any, plan: Plan, out: Path) -> dict[str, float]:
    from lm_eval_lingreg.bundled import model_dir
    from lm_eval_lingreg.evaluation import evaluate_conditions
    from lm_eval_lingreg.outputs import write_json
    from lm_eval_lingreg.region_io import save_region
    from lm_eval_lingreg.regions import jaccard
    from lm_eval_lingreg.scores import Scoring, score_languages

    root = _scores_root(lm, plan)
    bundled = Path(str(lm.pretrained)).resolve() == model_dir().resolve()
    label = DEFAULT_MODEL if bundled else str(lm.pretrained)  # as `lingreg score` labels them, so its runs reuse these files
    timing: dict[str, float] = {}
    for options in PROTOCOLS.values():  # every protocol's options checked before any scoring
        Scoring(plan.samples, checkpoints=tuple(plan.checkpoints), **options)
    stops = [*plan.checkpoints, plan.samples]
    regions: dict[str, dict[int, dict[str, Any]]] = {}
    for name, options in PROTOCOLS.items():
        t = time.perf_counter()
        score_languages(
            lm.model,
            lm.tokenizer,
            plan.langs,
            root / name,
            plan.samples,
            model_label=label,
            checkpoints=plan.checkpoints,
            overwrite=plan.scores_dir is None,  # the default cache is this experiment's own: rescore what another plan left there
            **options,
        )
        timing[f"score_{name}"] = time.perf_counter() - t
        t = time.perf_counter()
        regions[name] = {n: regions_of(root / name if n == plan.samples else root / name / "checkpoints" / str(n), plan) for n in stops}
        for key, region in regions[name][plan.samples].items():
            save_region(region, root / name / "regions" / f"{key}.safetensors", overwrite=True)
        timing[f"select_{name}"] = time.perf_counter() - t
    labels = list(regions["default"][plan.samples])
    agreement = {
        "stability": {p: {str(n): {k: jaccard(regions[p][n][k], regions[p][plan.samples][k])[0] for k in labels} for n in plan.checkpoints} for p in PROTOCOLS},
        "bf16_vs_fp32": {str(n): {k: jaccard(regions["paper"][n][k], regions["paper-fp32"][n][k])[0] for k in labels} for n in stops},
        "default_vs_paper_fp32": {k: jaccard(regions["default"][plan.samples][k], regions["paper-fp32"][plan.samples][k])[0] for k in labels},
        "default_vs_paper": {k: jaccard(regions["default"][plan.samples][k], regions["paper"][plan.samples][k])[0] for k in labels},
        "entries": {p: {k: regions[p][plan.samples][k].num_selected for k in labels} for p in PROTOCOLS},
        "dtype": lm._lingreg_info["dtype"],
        "device": str(lm._lingreg_info["device"]),
        "model": label,
        "scores_dir": str(root),
    }
    if bundled:
        agreement["shipped"] = _shipped_agreement(regions["default"][plan.samples], plan)
    write_json(out / "agreement.json", agreement)
    t = time.perf_counter()
    conditions = {"base": None, **{f"{p}.{k}": regions[p][plan.samples][k] for p in EVALUATED for k in labels}}
    evaluate_conditions(lm, conditions, plan.eval_langs, limit=plan.limit, output_dir=out / "harness")
    timing["evaluation"] = time.perf_counter() - t
    return timing


def _shipped_agreement(final: dict[str, Any], plan: Plan) -> dict[str, float]:
    """Jaccard of the default protocol's regions with the masks shipped in masks/ (made by the same command when the
    plan matches scripts/make_masks.py: 200 samples, seed 0, 1%, the six core languages)."""
    from lm_eval_lingreg.region_io import load_region, shipped_masks
    from lm_eval_lingreg.regions import jaccard

    names = {
        "core": "core-top-1",
        **{f"mono-{iso}": f"mono-{iso}-1" for iso in plan.langs},
        **{f"mono-bottom-{iso}": f"mono-{iso}-bottom-1" for iso in plan.langs},
    }
    shipped = shipped_masks()
    if plan.samples != 200 or plan.ratio != 0.01 or sorted(plan.langs) != sorted(CORE_LANGUAGES):
        return {}
    return {k: jaccard(final[k], load_region(m))[0] for k, m in names.items() if m in shipped}


def _ratios(out: Path, plan: Plan) -> dict[str, dict[str, float]]:
    from lm_eval_lingreg.results import load_runs

    runs = {r.label: r for r in load_runs([out / "harness"])}
    base = runs["base"]
    return {c: {iso: r.value(iso, "token_perplexity") / base.value(iso, "token_perplexity") for iso in plan.eval_langs} for c, r in runs.items() if c != "base"}


def section(out: Path, record: dict[str, Any]) -> str:
    """The protocol page (markdown) from the results under `out`."""
    from lm_eval_lingreg.report import fmt_short as fmt
    from lm_eval_lingreg.results import geomean

    plan = Plan(**record["plan"])
    agreement = read_json(out / "agreement.json")
    ratio = _ratios(out, plan)
    lines = _intro_lines(out, record, plan, agreement)
    lines += _movement_lines(plan, agreement)
    lines += _stability_lines(plan, agreement)
    lines += _harness_lines(plan, ratio, fmt, geomean)
    return "\n".join(lines) + "\n"


def _mean(d: dict[str, float], keys: list[str]) -> float:
    return statistics.fmean(d[k] for k in keys)


def _intro_lines(out: Path, record: dict[str, Any], plan: Plan, agreement: dict[str, Any]) -> list[str]:
    """The page's title, how it was made, and the options of the two protocols."""
    seconds = record["seconds"]
    return [
        "# The official protocol beside the default one\n",
        f"Generated by `{record['command']}` on {agreement.get('model', 'the bundled model')} ({agreement.get('device', 'cpu')}, weights in "
        f"{agreement['dtype']}) in {sum(seconds.values()) / 60:.0f} min: "
        + ", ".join(f"scoring {p} {seconds[f'score_{p}'] / 60:.1f} min" for p in PROTOCOLS)
        + f", harness {seconds['evaluation'] / 60:.1f} min. {len(plan.langs)} languages ({', '.join(plan.langs)}), {plan.samples} eld samples each "
        f"(seed 0), regions of {plan.ratio:.0%} per tensor; raw results in `{out}/`.\n",
        "| option | default | official code (`lingreg score --preset paper`) |",
        "|---|---|---|",
        "| sample | BOS + sentence (`--unit sentences`) | BOS + document + EOS, documents over 512 tokens dropped (`--unit documents`) |",
        "| loss | each sample's mean token loss (`--loss-norm sample`) | the Hugging Face mean over all tokens of a micro-batch of 8 (`--loss-norm batch-token`) |",
        "| gradient accumulation | float32 (`--grad-dtype float32`) | bfloat16, scores saved in bfloat16 (`--grad-dtype bfloat16`) |",
        "| forward | the model's dtype | bfloat16 (`--dtype bfloat16`) |",
        "",
        f"Here the forward ran in {agreement['dtype']} for all three"
        + (" (`--dtype auto` on a device without native bfloat16, where it is several times slower)" if agreement["dtype"] == "float32" else "")
        + ", so the bfloat16 rows isolate the accumulation. On the eld sentences no document exceeds 512 tokens, so the unit differs by the EOS only.\n",
    ]


def _movement_lines(plan: Plan, agreement: dict[str, Any]) -> list[str]:
    """How far the regions move between protocols, against the shipped masks, and with bfloat16 accumulation as samples grow."""
    from tabulate import tabulate

    mono = [f"mono-{iso}" for iso in plan.langs]
    bottoms = [f"mono-bottom-{iso}" for iso in plan.langs]
    lines = [
        "## How far the regions move\n",
        f"Jaccard index (|A and B| / |A or B|) of the final regions; for the monolingual regions, the mean over the {len(plan.langs)} languages.\n",
    ]
    rows = []
    for key, title in (("default_vs_paper_fp32", "default vs official unit and loss (float32)"), ("default_vs_paper", "default vs official (all)")):
        a = agreement[key]
        rows.append([title, f"{a['core']:.3f}", f"{_mean(a, mono):.3f}", f"{_mean(a, bottoms):.3f}"])
    last = agreement["bf16_vs_fp32"][str(plan.samples)]
    rows.append(["official, bfloat16 vs float32 accumulation", f"{last['core']:.3f}", f"{_mean(last, mono):.3f}", f"{_mean(last, bottoms):.3f}"])
    lines += [tabulate(rows, headers=["comparison", "core top", "monolingual top (mean)", "monolingual bottom (mean)"], tablefmt="github"), ""]
    shipped = agreement.get("shipped") or {}
    if "core" in shipped:
        lines += [
            f"The default protocol's regions against the masks shipped in `masks/` (made by `scripts/make_masks.py` with the same options): "
            f"core top {shipped['core']:.4f}"
            + (f", monolingual top {_mean(shipped, [k for k in mono if k in shipped]):.4f} (mean)" if any(k in shipped for k in mono) else "")
            + ".\n"
        ]
    lines += ["bfloat16 against float32 accumulation as samples grow (official unit and loss):\n"]
    rows = [[n, f"{v['core']:.3f}", f"{_mean(v, mono):.3f}", f"{min(v[k] for k in mono):.3f}"] for n, v in agreement["bf16_vs_fp32"].items()]
    return lines + [tabulate(rows, headers=["samples", "core top", "monolingual top (mean)", "monolingual top (lowest)"], tablefmt="github"), ""]


def _stability_lines(plan: Plan, agreement: dict[str, Any]) -> list[str]:
    """How the region after n samples agrees with the final one, per protocol."""
    from tabulate import tabulate

    mono = [f"mono-{iso}" for iso in plan.langs]
    lines = [
        "## How many samples are enough\n",
        f"Jaccard index of the region after n samples with the region after all {plan.samples}, per protocol:\n",
    ]
    rows = []
    for p, per_n in agreement["stability"].items():
        for n, v in per_n.items():
            rows.append([p, n, f"{v['core']:.3f}", f"{_mean(v, mono):.3f}", f"{min(v[k] for k in mono):.3f}"])
    return lines + [tabulate(rows, headers=["protocol", "samples", "core top", "monolingual top (mean)", "monolingual top (lowest)"], tablefmt="github"), ""]


def _harness_lines(plan: Plan, ratio: dict, fmt: Any, geomean: Any) -> list[str]:
    from tabulate import tabulate

    lines = [
        "## The regions through the harness\n",
        f"Token perplexity ratio to the unchanged model, {plan.limit or 31} UDHR documents per language (`lingreg_ppl_<iso>`), "
        f"geometric mean over the {len(plan.eval_langs)} languages:\n",
        tabulate([[p, fmt(geomean(ratio[f"{p}.core"].values()))] for p in EVALUATED], headers=["core top region of", "x ppl (geo-mean)"], tablefmt="github"),
        "",
        "Monolingual regions and their bottom controls: ratio on the region's own language, mean ratio on the other languages, and "
        "selectivity (their quotient):\n",
    ]
    rows = []
    for iso in plan.langs:
        row = [LANGUAGES[iso].name]
        for p in EVALUATED:
            for kind in ("mono", "mono-bottom"):
                r = ratio[f"{p}.{kind}-{iso}"]
                others = statistics.fmean(v for k, v in r.items() if k != iso)
                row.append(f"{fmt(r[iso])} / {fmt(others)} = {fmt(r[iso] / others)}")
        rows.append(row)
    headers = ["language", *(f"{p}: {k}" for p in EVALUATED for k in ("top", "bottom control"))]
    lines += [tabulate(rows, headers=headers, tablefmt="github"), ""]
    worst = max((abs(math.log(ratio[f"paper.mono-{iso}"][iso] / ratio[f"default.mono-{iso}"][iso])), iso) for iso in plan.langs)
    lines += [
        f"The largest change of a monolingual region's own-language ratio between the protocols: {LANGUAGES[worst[1]].name}, x{fmt(math.exp(worst[0]))}.",
        "",
    ]
    return lines
