"""Cost of one `lingreg scan` run (perturb, measure, restore exactly) / one plain probe measurement.

Same loaded bundled model, same probe set (4 languages x 2 UDHR documents x 128 tokens); the
two alternate, and the ratio of medians is reported together with the extrapolated time of
a 40-candidate scan. The target of the dimensional-dependence work is "40 dimensions in a
few minutes"; a ratio near 1 means applying and restoring perturbations costs next to nothing.

    python bench/scan_overhead.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lm_eval_lingreg.anatomy import named_parameters
    from lm_eval_lingreg.bundled import prepare
    from lm_eval_lingreg.interventions import perturb
    from lm_eval_lingreg.perturbation import Perturbation
    from lm_eval_lingreg.scan import ProbeSet, probe_perplexity, probe_texts

    path = prepare()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    probe = ProbeSet.build(tok, probe_texts(["en", "zh", "ar", "ru"], 2), 128)
    before = {n: p.detach().clone() for n, p in named_parameters(model).items()}
    plain, scanned, apply_restore = [], [], []
    probe_perplexity(model, probe)  # warm-up
    for i in range(args.repeats):
        t = time.perf_counter()
        probe_perplexity(model, probe)
        plain.append(time.perf_counter() - t)
        t = time.perf_counter()
        with perturb(model, Perturbation(op="mul", value=4.0, dims=(97 + i,), layers=(1,))):
            probe_perplexity(model, probe)
        scanned.append(time.perf_counter() - t)
        t = time.perf_counter()
        perturb(model, Perturbation(op="mul", value=4.0, dims=(97 + i,), layers=(1,))).restore()
        apply_restore.append(time.perf_counter() - t)
    exact = all(torch.equal(p, before[n]) for n, p in named_parameters(model).items())
    ratio = statistics.median(scanned) / statistics.median(plain)
    print(f"plain probe {statistics.median(plain):.2f} s; scan run {statistics.median(scanned):.2f} s; ratio {ratio:.3f}")
    print(f"apply + restore alone: {1000 * statistics.median(apply_restore):.1f} ms (8,708 entries); weights bit-exact afterwards: {exact}")
    print(f"40-candidate scan (plus one base run): about {41 * statistics.median(scanned) / 60:.1f} min")


if __name__ == "__main__":
    main()
