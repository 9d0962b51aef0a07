"""Evaluation speed per dtype on the bundled model, beside a bare forward + cross-entropy loop, and the main job's wall time.

(1) tokens/s of the harness path (`hf-lingreg` through lm-eval, `rolling_bos=context`) in float32 and bfloat16 (fp32
    log-softmax), each divided by a bare loop over the same documents in the same dtype (forward on BOS + document,
    full-vocabulary cross-entropy), alternating, median of the repeats;
(2) agreement of bfloat16 with float32: token perplexity per language;
(3) with --main-job: the wall time of `lingreg demo` (the README's main job, warm install) in a fresh process.

    python bench/eval_speed.py [--langs en,zh,ar,ru,ko,sw] [--limit 4] [--repeats 2] [--main-job]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def bare_loop(model, tok, texts: list[str]) -> tuple[float, int]:
    """Seconds and tokens of a plain forward + cross-entropy over BOS + each document (no harness)."""
    import torch

    tokens, t0 = 0, time.perf_counter()
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([[tok.bos_token_id, *tok(text, add_special_tokens=False).input_ids]])
            logits = model(input_ids=ids).logits[0, :-1].float()
            torch.nn.functional.cross_entropy(logits, ids[0, 1:])
            tokens += ids.shape[1] - 1
    return time.perf_counter() - t0, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--langs", default="en,zh,ar,ru,ko,sw")
    ap.add_argument("--limit", type=int, default=4, help="documents per language")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--main-job", action="store_true", help="also time `lingreg demo` (default options) in a fresh process")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import lm_eval

    from lm_eval_lingreg.bundled import prepare
    from lm_eval_lingreg.evaluation import task_manager, task_names
    from lm_eval_lingreg.languages import parse_languages
    from lm_eval_lingreg.models import LingregLM
    from lm_eval_lingreg.results import per_language
    from lm_eval_lingreg.scan import probe_texts

    langs = parse_languages(args.langs)
    texts = [t for docs in probe_texts(langs, args.limit).values() for t in docs]
    path = str(prepare())
    figures: dict = {"langs": langs, "documents_per_language": args.limit}
    ppl = {}
    for dtype in ("float32", "bfloat16"):
        lm = LingregLM(pretrained=path, device="cpu", dtype=dtype, batch_size=1)
        harness, bare, tokens = [], [], 0
        for _ in range(args.repeats):
            res = lm_eval.simple_evaluate(model=lm, tasks=task_names(langs), limit=args.limit, task_manager=task_manager())
            info = res["config"]["lingreg"]
            harness.append(info["tokens_scored"] / info["scoring_seconds"])
            seconds, tokens = bare_loop(lm.model, lm.tokenizer, texts)
            bare.append(tokens / seconds)
        ppl[dtype] = per_language(res, "token_perplexity")
        figures[dtype] = {
            "harness_tokens_per_s": statistics.median(harness),
            "bare_tokens_per_s": statistics.median(bare),
            "harness_over_bare_time": statistics.median(bare) / statistics.median(harness),
            "tokens": tokens,
        }
        del lm
    figures["bf16_speedup_harness"] = figures["bfloat16"]["harness_tokens_per_s"] / figures["float32"]["harness_tokens_per_s"]
    figures["bf16_over_fp32_token_perplexity"] = {iso: ppl["bfloat16"][iso] / ppl["float32"][iso] for iso in langs}
    if args.main_job:
        t0 = time.perf_counter()
        subprocess.run(
            [str(Path(sys.executable).parent / "lingreg"), "-q", "demo", "--output-path", "/tmp/lingreg-bench-demo"], check=True, stdout=subprocess.DEVNULL
        )
        figures["main_job_wall_s"] = time.perf_counter() - t0
    print(json.dumps(figures, indent=1))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
