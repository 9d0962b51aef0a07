"""Scoring throughput and memory, against a plain full-parameter forward+backward loop over the same batches.

(1) tokens/s of `sum_gradients` (in-scope gradients only, fp32 accumulation, head/loss chunks from
    --max-logits-mb) divided by tokens/s of the plain loop, alternating the two (target on the 2-core CPU:
    no slower than before, 1.5; on a GPU: at least 0.9);
(2) peak memory while scoring divided by the model's size: on the CPU the resident-set high-water mark in a
    fresh process (target <= 3); on a GPU torch's peak allocation, beside the plain loop's (target: no more).

    python bench/scoring_throughput.py [--lang es] [--samples 48] [--batch-size 4] [--repeats 3]
    python bench/scoring_throughput.py --device cuda --model random-llama --samples 64 --seq-len 512 --batch-size 8 --dtype bfloat16
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


def _load(args):
    """(model, pad id, samples): the bundled model on eld text, or a random Llama (hidden 2048, 16 layers, vocab 32000) on random blocks."""
    import torch

    dtype = getattr(torch, args.dtype)
    if args.model == "random-llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        cfg = LlamaConfig(
            vocab_size=32000,
            hidden_size=2048,
            intermediate_size=5632,
            num_hidden_layers=16,
            num_attention_heads=16,
            num_key_value_heads=16,
            max_position_embeddings=args.seq_len,
        )
        model = LlamaForCausalLM(cfg).to(dtype).to(args.device).eval()
        samples = torch.randint(3, 32000, (args.samples, args.seq_len)).tolist()
        return model, 0, samples
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lm_eval_lingreg.bundled import prepare
    from lm_eval_lingreg.corpora import make_samples

    path = prepare()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(args.device).eval()
    tok = AutoTokenizer.from_pretrained(path)
    return model, tok.pad_token_id, make_samples(tok, args.lang, args.samples, seed=0).input_ids


def throughput(args) -> dict:
    import torch

    from lm_eval_lingreg.importance import sum_gradients
    from lm_eval_lingreg.lm_loss import pad_batch

    model, pad_id, samples = _load(args)
    cuda = args.device.startswith("cuda")
    ordered = sorted(samples, key=len)
    batches = [tuple(t.to(args.device) for t in pad_batch(ordered[i : i + args.batch_size], pad_id)) for i in range(0, len(ordered), args.batch_size)]
    rates: dict[str, list[float]] = {"lingreg": [], "plain": []}
    peaks: dict[str, int] = {}

    def timed(name, fn):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        n = fn()
        if cuda:
            torch.cuda.synchronize()
            peaks[name] = max(peaks.get(name, 0), torch.cuda.max_memory_allocated())
        rates[name].append(n / (time.perf_counter() - t0))

    for _ in range(args.repeats):
        for p in model.parameters():
            p.requires_grad_(True)
        timed("plain", lambda: _plain_loop(model, batches))
        timed("lingreg", lambda: sum_gradients(model, samples, batch_size=args.batch_size, pad_id=pad_id, max_logits_mb=args.max_logits_mb).tokens)
    med = {k: statistics.median(v) for k, v in rates.items()}
    out = {"tokens_per_s": med, "ratio_lingreg_over_plain": med["lingreg"] / med["plain"], "max_logits_mb": args.max_logits_mb}
    if cuda:
        out["peak_bytes"] = peaks
        out["peak_ratio_lingreg_over_plain"] = peaks["lingreg"] / peaks["plain"]
    return out


def memory(args) -> dict:
    """In a fresh process (see `child`), so the throughput runs do not inflate the peak."""
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--lang",
        args.lang,
        "--samples",
        str(args.samples),
        "--batch-size",
        str(args.batch_size),
        "--dtype",
        args.dtype,
        "--max-logits-mb",
        str(args.max_logits_mb),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _status(key: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def child(args) -> dict:
    from lm_eval_lingreg.importance import sum_gradients

    model, pad_id, ids = _load(args)
    model_bytes = sum(p.numel() * 4 for p in model.parameters())
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS high-water mark
    before = _status("VmRSS")
    sum_gradients(model, ids, batch_size=args.batch_size, pad_id=pad_id, max_logits_mb=args.max_logits_mb)
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
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--model", default="bundled", choices=["bundled", "random-llama"])
    ap.add_argument("--seq-len", type=int, default=512, help="random-llama: tokens per sample")
    ap.add_argument("--max-logits-mb", type=float, default=64.0, help="head/loss chunk budget (the scorer's default is 64)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    figures = {
        "throughput": throughput(args),
        "device": args.device,
        "dtype": args.dtype,
        "model": args.model,
        "samples": args.samples,
        "batch_size": args.batch_size,
    }
    if not args.device.startswith("cuda"):
        figures["memory"] = memory(args)
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
