"""Evaluation wall time of `hf-region-ablated` (1% mask) / plain `hf`, side by side in one process.

Both models are loaded once; evaluations alternate (hf, ablated, hf, ablated, ...) on the same
tasks and batch size, and the ratio of median times is reported. Mask application (load +
validate + write) is timed separately. Target: ratio <= 1.03.

    python bench/harness_overhead.py [--langs en,zh,ar,ru,ko,vi] [--limit 4] [--repeats 5]
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
    ap.add_argument("--langs", default="en,zh,ar,ru,ko,vi")
    ap.add_argument("--limit", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()

    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from lm_eval_lingreg.anatomy import scope_shapes
    from lm_eval_lingreg.bundled import prepare
    from lm_eval_lingreg.evaluation import task_names
    from lm_eval_lingreg.languages import parse_languages
    from lm_eval_lingreg.models import RegionAblatedLM
    from lm_eval_lingreg.region_io import save_region
    from lm_eval_lingreg.selection import select_random

    path = str(prepare())
    tasks = task_names(parse_languages(args.langs))
    common = dict(device="cpu", dtype="float32", batch_size=1)
    plain = HFLM(pretrained=path, **common)
    with tempfile.TemporaryDirectory() as d:
        mask = save_region(select_random(scope_shapes(plain.model), 0.01, seed=0), Path(d) / "r1.safetensors")
        t0 = time.perf_counter()
        ablated = RegionAblatedLM(pretrained=path, mask=str(mask), **common)
        construct_with_mask = time.perf_counter() - t0
        t0 = time.perf_counter()
        RegionAblatedLM(pretrained=path, **common)
        construct_without = time.perf_counter() - t0

    manager = TaskManager()
    times: dict[str, list[float]] = {"hf": [], "hf-region-ablated": []}
    for _ in range(args.repeats):
        for name, lm in (("hf", plain), ("hf-region-ablated", ablated)):
            t0 = time.perf_counter()
            lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=args.limit)
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    figures = {
        "tasks": tasks,
        "limit": args.limit,
        "repeats": args.repeats,
        "median_s": med,
        "ratio_ablated_over_hf": med["hf-region-ablated"] / med["hf"],
        "mask_application_s": construct_with_mask - construct_without,
        "entries_changed": ablated._lingreg_info["entries_changed"],
    }
    print(json.dumps(figures, indent=1))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
