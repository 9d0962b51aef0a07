"""Scoring throughput and memory on the bundled model.

(1) tokens/s of `sum_gradients` (in-scope gradients only, fp32 accumulation) divided by
    tokens/s of a plain full-parameter forward+backward loop over the same batches,
    alternating the two (target >= 1.0);
(2) peak resident memory while scoring divided by the model's fp32 size (target <= 3),
    measured in a fresh process with the kernel's high-water mark reset after loading.

    python bench/scoring_throughput.py [--lang es] [--samples 48] [--batch-size 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def _plain_loop(model, batches) -> int:
    """Every parameter requires grad, HF's own loss, gradients accumulate in .grad."""
    tokens = 0
    for ids, attn in batches:
        labels = ids.masked_fill(attn == 0, -100)
        model(input_ids=ids, attention_mask=attn, labels=labels).loss.backward()
        tokens += int((labels[:, 1:] != -100).sum())
    model.zero_grad(set_to_none=True)
    return tokens


def _load(lang: str, samples: int):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lm_eval_lingreg.bundled import prepare
    from lm_eval_lingreg.corpora import make_samples

    path = prepare()
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    return model, tok, make_samples(tok, lang, samples, seed=0).input_ids


def throughput(args) -> dict:
    from lm_eval_lingreg.importance import sum_gradients
    from lm_eval_lingreg.lm_loss import pad_batch

    model, tok, samples = _load(args.lang, args.samples)
    ordered = sorted(samples, key=len)
    batches = [pad_batch(ordered[i : i + args.batch_size], tok.pad_token_id) for i in range(0, len(ordered), args.batch_size)]
    rates: dict[str, list[float]] = {"lingreg": [], "plain": []}
    for _ in range(args.repeats):
        for p in model.parameters():
            p.requires_grad_(True)
        t0 = time.perf_counter()
        n = _plain_loop(model, batches)
        rates["plain"].append(n / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        r = sum_gradients(model, samples, batch_size=args.batch_size, pad_id=tok.pad_token_id)
        rates["lingreg"].append(r.tokens / (time.perf_counter() - t0))
    med = {k: statistics.median(v) for k, v in rates.items()}
    return {"tokens_per_s": med, "ratio_lingreg_over_plain": med["lingreg"] / med["plain"], "tokens_per_pass": r.tokens}


def memory(args) -> dict:
    """In a fresh process (see `child`), so the throughput runs do not inflate the peak."""
    cmd = [sys.executable, __file__, "--child", "--lang", args.lang, "--samples", str(args.samples), "--batch-size", str(args.batch_size)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _status(key: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def child(lang: str, samples: int, batch_size: int) -> dict:
    from lm_eval_lingreg.importance import sum_gradients

    model, tok, ids = _load(lang, samples)
    model_bytes = sum(p.numel() * 4 for p in model.parameters())
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS high-water mark
    before = _status("VmRSS")
    sum_gradients(model, ids, batch_size=batch_size, pad_id=tok.pad_token_id)
    peak = _status("VmHWM")
    return {
        "model_fp32_bytes": model_bytes,
        "rss_before_scoring": before,
        "peak_rss_during_scoring": peak,
        "peak_over_model_size": peak / model_bytes,
        "extra_over_model_size": (peak - before) / model_bytes,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lang", default="es")
    ap.add_argument("--samples", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.lang, args.samples, args.batch_size)))
        return
    figures = {"throughput": throughput(args), "memory": memory(args), "lang": args.lang, "samples": args.samples, "batch_size": args.batch_size}
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
