"""Training with a frozen region / without: step time, and the memory the frozen entries hold.

Two copies of the bundled model train on the same Korean blocks, alternating step by step
(one frozen with the shipped core top-5% region, one not), and the ratio of median step times
is reported, with the bytes the frozen entries take against the fp32 model.

    python bench/freeze_overhead.py [--steps 6] [--freeze core-top-5]
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--freeze", default="core-top-5")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lm_eval_lingreg.bundled import prepare
    from lm_eval_lingreg.freeze import FrozenRegion
    from lm_eval_lingreg.region_io import load_region
    from lm_eval_lingreg.training import loss_backward, split_blocks

    path = prepare()
    tok = AutoTokenizer.from_pretrained(path)
    blocks = split_blocks(tok, "ko", None, 64, 0.1, 0)[0]
    region = load_region(args.freeze)
    runs = {}
    for label in ("plain", "frozen"):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
        frozen = FrozenRegion(model, region).attach(opt) if label == "frozen" else None
        runs[label] = (model, opt, frozen, [])
    model_bytes = sum(p.numel() * p.element_size() for p in runs["plain"][0].parameters())
    for step in range(args.steps + 1):
        ids = torch.tensor(blocks[4 * step : 4 * step + 4])
        for model, opt, frozen, times in runs.values():
            t = time.perf_counter()
            loss_backward(model, ids, 1.0)
            if frozen is not None:
                frozen.zero_grads()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if step:  # the first step warms up
                times.append(time.perf_counter() - t)
    plain, frozen_t = statistics.median(runs["plain"][3]), statistics.median(runs["frozen"][3])
    frozen = runs["frozen"][2]
    print(f"step time: plain {plain:.2f} s, frozen {frozen_t:.2f} s, ratio {frozen_t / plain:.3f}")
    print(
        f"frozen entries: {frozen.num_frozen:,}, held {frozen.nbytes / 2**20:.1f} MiB = {frozen.nbytes / model_bytes:.2%} of the fp32 model "
        f"({model_bytes / 2**30:.2f} GiB); intact after {args.steps + 1} steps: {frozen.verify()}"
    )


if __name__ == "__main__":
    main()
