"""Run the forgetting experiment on the bundled model and write docs/FORGETTING.md.

    python scripts/forget_report.py [--from-results] [-- extra `lingreg forget` options]

Runs `lingreg forget` with its defaults (Korean, none / core top-5% / random 5%, 30 languages x
2 UDHR documents before and after) into docs/results/forget/, then writes the report from
its summary.json. `--from-results` only rewrites the report.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

from lm_eval_lingreg.report import fmt_short as fmt

ROOT = Path(__file__).resolve().parent.parent



def report(res: Path, wall: float | None) -> str:
    from tabulate import tabulate

    from lm_eval_lingreg.languages import LANGUAGES

    s = json.loads((res / "summary.json").read_text())
    cfg, f, conds, target = s["config"], s["forgetting"], s["conditions"], s["target"]
    L: list[str] = []
    w = L.append
    w("# Freezing the core region during further pre-training (finding 4)\n")
    w(f"The bundled Gemma-3-270M is further pre-trained on {LANGUAGES[target].name} under each condition: the same data, "
      f"steps, seed and schedule; only which entries are frozen differs. Then all 30 languages are evaluated with the harness.\n")
    w("Regenerate: `python scripts/forget_report.py`, which runs\n")
    w(f"    lingreg forget --lang {target} --conditions {','.join(s['conditions']).replace('-0', ':0')} -o docs/results/forget\n")
    w(f"- training: {cfg['steps']} AdamW steps, lr {cfg['lr']:g} (warmup {cfg['warmup']}, {cfg['schedule']}), weight decay {cfg['weight_decay']:g}, "
      f"{cfg['batch_size']} x {cfg['seq_len']}-token blocks per step, seed {cfg['seed']}; "
      + ("every parameter trains" if cfg["train_scope"] == "all" else f"the parameters matching `{cfg['train_scope']}` train (the transformer blocks, where regions live; embeddings and lm_head stay fixed)")
      + f"; text: eld {LANGUAGES[target].name} sentences "
      f"(90% train, 10% held out)")
    w(f"- evaluation: `lingreg_ppl`, {s['eval_limit'] or 31} UDHR documents per language, token perplexity after / before (below 1 = better)")
    w(f"- wall time: {s['seconds'] / 60:.0f} min on 2 CPU cores (training {', '.join(f'{k} {v / 60:.1f} min' for k, v in s['train_seconds'].items())})"
      + (f"; {wall / 60:.0f} min with start-up" if wall else "") + "\n")

    w("## Summary\n")
    rows = []
    for c in conds:
        fr = s["frozen"][c] or {}
        others = [v for iso, v in f[c]["ratios"].items() if iso != target]
        rows.append([c, f"{fr.get('entries', 0):,}", "yes" if fr.get("exact", True) else "NO", fmt(f[c]["target_ratio"]), fmt(f[c]["others_geomean_ratio"]),
                     f"{fmt(f[c]['others_max_ratio'])} ({f[c]['others_worst']})", sum(v > 2 for v in others)])
    w(tabulate(rows, headers=["condition", "frozen entries", "frozen intact", f"x ppl {target} (target)", "x ppl other 29 (geo-mean)", "x ppl other (max)", "others above x2"], tablefmt="github"))
    w("")
    if "none" in f and any(c.startswith("core") for c in conds):
        core = next(c for c in conds if c.startswith("core"))
        rnd = next((c for c in conds if c.startswith("random")), None)
        fn, fc = f["none"]["others_geomean_ratio"], f[core]["others_geomean_ratio"]
        w("## What this shows\n")
        w(f"- Without freezing, the other 29 languages' perplexity grows by x{fmt(fn)} (geometric mean; worst {f['none']['others_worst']} x{fmt(f['none']['others_max_ratio'])}).")
        w(f"- With the core region frozen ({core}): x{fmt(fc)} (worst {f[core]['others_worst']} x{fmt(f[core]['others_max_ratio'])}). "
          f"In log terms, freezing removes {100 * (1 - math.log(fc) / math.log(fn)):.0f}% of the forgetting." if fn > 1 and fc > 0 else f"- With {core}: x{fmt(fc)}.")
        if rnd:
            fr_ = f[rnd]["others_geomean_ratio"]
            w(f"- With a random region of the same size frozen ({rnd}): x{fmt(fr_)}; "
              + ("about as bad as no freezing, so it is the choice of entries, not their number, that matters." if fr_ > math.sqrt(fn * fc) else "closer to the core condition than to no freezing."))
        w(f"- The target language: x{fmt(f['none']['target_ratio'])} without freezing, x{fmt(f[core]['target_ratio'])} with the core frozen"
          + (f", x{fmt(f[rnd]['target_ratio'])} with the random region frozen." if rnd else "."))
        c0 = s["curves"]["none"]
        held0, held1 = c0[0]["perplexity"][target], c0[-1]["perplexity"][target]
        others_held = ", ".join(f"{c} x{fmt(s['curves'][c][-1]['perplexity'][target] / held0)}" for c in conds if c != "none")
        w(f"- On held-out {LANGUAGES[target].name} text of the training kind (eld sentences), perplexity went from {fmt(held0)} to {fmt(held1)} without freezing "
          f"(x{fmt(held1 / held0)}; {others_held}). "
          f"On the UDHR it went the other way: the short training sentences pull the model away from the formal register of the declaration, in the trained language too. "
          "The held-out curves of the other languages fall at first as well, because their eld blocks share the packed-sentence format the model adapts to; "
          "the harness on the UDHR, a different text, is what measures forgetting here.")
        w("- These are perplexity ratios on a 270M-parameter model after a short run; the paper's setting (LLaMA-2, much longer training) is not reproduced here.\n")

    w("## Per language\n")
    before = s["before"]
    rows = [[LANGUAGES[iso].name + (" (target)" if iso == target else ""), fmt(before[iso]), *(fmt(s["after"][c][iso] / before[iso]) for c in conds)] for iso in before]
    w(tabulate(rows, headers=["language", "ppl before", *(f"x {c}" for c in conds)], tablefmt="github"))
    w("")
    w("## Held-out perplexity during training\n")
    w("![curves](figures/forget-curves.png)\n")
    pts = s["curves"]
    langs = list(next(iter(pts.values()))[0]["perplexity"])
    rows = [[c, p["step"], *(fmt(p["perplexity"][iso]) for iso in langs)] for c in conds for p in pts[c]]
    w(tabulate(rows, headers=["condition", "step", *langs], tablefmt="github"))
    return "\n".join(L) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from-results", action="store_true")
    ap.add_argument("--results", type=Path, default=ROOT / "docs" / "results" / "forget")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "FORGETTING.md")
    args, extra = ap.parse_known_args()
    wall = None
    if not args.from_results:
        t0 = time.perf_counter()
        lingreg = Path(sys.executable).parent / "lingreg"
        subprocess.run([str(lingreg), "forget", "-o", str(args.results), *[e for e in extra if e != "--"]], check=True)
        wall = time.perf_counter() - t0
        (args.results / "WALL.json").write_text(json.dumps({"wall_seconds": round(wall, 1)}))
    elif (args.results / "WALL.json").is_file():
        wall = json.loads((args.results / "WALL.json").read_text())["wall_seconds"]
    (ROOT / "docs" / "figures").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.results / "curves.png", ROOT / "docs" / "figures" / "forget-curves.png")
    from lm_eval_lingreg._atomic import atomic_path

    with atomic_path(args.out) as tmp:
        tmp.write_text(report(args.results, wall), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
