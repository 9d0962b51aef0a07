"""Cost of each region source on the bundled model, beside the paper's scoring on the same calibration text.

For one language's calibration samples (the same token ids for every method), alternating, median of the repeats:
- `scoring`: the paper's importance pass (`sum_gradients`: forward, head and loss, backward);
- `wanda`: the activation-statistics pass (`input_norms`: body forward only, one norm vector per linear layer);
- `lape`: P(act > 0) per FFN neuron (`activation_probabilities`: body forward only);
- `magnitude`: |W| selection (no text).
Each is reported as seconds and as a ratio to `scoring`; for the activation methods, the bytes of statistics they keep
beside the bytes that keeping the activations they read would take (they keep one vector per layer).

    python bench/sources_cost.py [--lang en] [--samples 32] [--repeats 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lang", default="en")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from lm_eval_lingreg.corpora import make_samples
    from lm_eval_lingreg.importance import sum_gradients
    from lm_eval_lingreg.loading import load_model
    from lm_eval_lingreg.sources import activation_probabilities, input_norms, select_magnitude

    model, tok = load_model(None, device="cpu", dtype="float32")
    ids = make_samples(tok, args.lang, args.samples).input_ids
    tokens = sum(len(s) for s in ids)
    pad = tok.pad_token_id or 0
    methods = {
        "scoring": lambda: sum_gradients(model, ids, batch_size=4, pad_id=pad),
        "wanda": lambda: input_norms(model, ids, batch_size=4, pad_id=pad),
        "lape": lambda: activation_probabilities(model, {args.lang: ids}, batch_size=4, pad_id=pad),
        "magnitude": lambda: select_magnitude(model, 0.01),
    }
    times: dict[str, list[float]] = {m: [] for m in methods}
    kept: dict[str, object] = {}
    for _ in range(args.repeats):
        for name, fn in methods.items():
            t = time.perf_counter()
            kept[name] = fn()
            times[name].append(time.perf_counter() - t)
            model.zero_grad(set_to_none=True)
    norms = kept["wanda"][0]
    probs = kept["lape"][0]
    inter = probs.shape[1]
    med = {m: statistics.median(v) for m, v in times.items()}
    out = {
        "lang": args.lang,
        "samples": args.samples,
        "tokens": tokens,
        "seconds": med,
        "seconds_each_repeat": {m: [round(t, 2) for t in v] for m, v in times.items()},
        "ratio_to_scoring": {m: med[m] / med["scoring"] for m in med},
        "tokens_per_s": {m: tokens / med[m] for m in med if m != "magnitude"},
        "statistics_bytes": {"wanda": sum(v.numel() * 4 for v in norms.values()), "lape": probs.numel() * 8},
        "activations_bytes_if_kept": {"wanda": tokens * sum(v.numel() for v in norms.values()) * 4, "lape": tokens * inter * probs.shape[0] * 4},
    }
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
