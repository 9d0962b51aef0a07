"""Generation through the harness (`hf-region-ablated`, `lingreg_gen_<iso>`) / a bare `model.generate` loop, side by side.

Both generate greedily, KV cache on, the same prompts (the openings of UDHR articles), the same
number of new tokens and the same batch size, on one loaded model. Runs alternate (harness, bare,
harness, bare, ...); the ratio of median tokens/s is reported (target >= 0.9). Then the language
detector's throughput on the generated outputs, against the generation rate, to show it is not the
bottleneck.

    python bench/generation_speed.py [--langs en,zh,ar,ru] [--limit 2] [--tokens 32] [--batch 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--langs", default="en,zh,ar,ru")
    ap.add_argument("--limit", type=int, default=2, help="prompts per language")
    ap.add_argument("--tokens", type=int, default=32, help="new tokens per prompt")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()

    import lm_eval
    import torch

    from lm_eval_lingreg.anatomy import scope_shapes
    from lm_eval_lingreg.bundled import prepare
    from lm_eval_lingreg.evaluation import task_manager
    from lm_eval_lingreg.langid import identify
    from lm_eval_lingreg.language_tasks import gen_task
    from lm_eval_lingreg.languages import parse_languages
    from lm_eval_lingreg.models import LingregLM, RegionAblatedLM
    from lm_eval_lingreg.region_io import save_region
    from lm_eval_lingreg.selection import select_random
    from lm_eval_lingreg.udhr import generation_docs

    path = str(prepare())
    langs = parse_languages(args.langs)
    common = dict(device="cpu", dtype="float32", batch_size=args.batch)
    with tempfile.TemporaryDirectory() as d:
        probe = LingregLM(pretrained=path, **common)
        mask = save_region(select_random(scope_shapes(probe.model), 0.01, seed=0), Path(d) / "r1.safetensors")
        del probe
        lm = RegionAblatedLM(pretrained=path, mask=str(mask), **common)
    model, tok = lm.model, lm.tokenizer
    prompts = [d["prompt"] for iso in langs for d in generation_docs(iso)[: args.limit]]
    tasks = [gen_task(iso) for iso in langs]
    manager = task_manager()
    tok.padding_side = "left"

    @torch.no_grad()
    def bare() -> tuple[int, float, list[str]]:
        t0 = time.perf_counter()
        n, outs = 0, []
        for i in range(0, len(prompts), args.batch):
            enc = tok(prompts[i : i + args.batch], return_tensors="pt", padding=True)
            ids = model.generate(**enc, max_new_tokens=args.tokens, do_sample=False, use_cache=True, pad_token_id=tok.pad_token_id)
            n += (ids.shape[1] - enc.input_ids.shape[1]) * ids.shape[0]
            outs += tok.batch_decode(ids[:, enc.input_ids.shape[1] :], skip_special_tokens=True)
        return n, time.perf_counter() - t0, outs

    def harness() -> tuple[int, float, list[str]]:
        t0 = time.perf_counter()
        res = lm_eval.simple_evaluate(
            model=lm, tasks=tasks, task_manager=manager, limit=args.limit, gen_kwargs={"max_gen_toks": args.tokens}, log_samples=True, bootstrap_iters=0
        )
        seconds = time.perf_counter() - t0
        info = res["config"]["lingreg"]
        outs = [s["filtered_resps"][0] for rows in res["samples"].values() for s in rows]
        return info["tokens_generated"], seconds, outs

    rates: dict[str, list[float]] = {"harness": [], "bare": []}
    outputs: list[str] = []
    harness()  # warm-up: task building, first-call costs
    for _ in range(args.repeats):
        for name, fn in (("harness", harness), ("bare", bare)):
            n, seconds, outs = fn()
            rates[name].append(n / seconds)
            outputs = outs or outputs
    med = {k: statistics.median(v) for k, v in rates.items()}

    texts = outputs * max(1, 2000 // max(1, len(outputs)))
    identify(texts[0])  # load the detector
    t0 = time.perf_counter()
    for t in texts:
        identify(t)
    det_rate = len(texts) / (time.perf_counter() - t0)
    gen_rate = med["harness"] / args.tokens  # outputs per second
    figures = {
        "prompts": len(prompts),
        "tokens_per_prompt": args.tokens,
        "batch_size": args.batch,
        "tokens_per_second": {k: [round(x, 2) for x in v] for k, v in rates.items()},
        "median_tokens_per_second": {k: round(v, 2) for k, v in med.items()},
        "ratio_harness_to_bare": round(med["harness"] / med["bare"], 3),
        "detector_texts_per_second": round(det_rate, 1),
        "generated_outputs_per_second": round(gen_rate, 3),
        "detector_share_of_time": round(gen_rate / det_rate, 5),
    }
    print(json.dumps(figures, indent=1))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
