"""Sharded scoring (FSDP2) against the replicated path at the same world size, in one torchrun run on the CPU (gloo).

Every rank holds two copies of one random Llama: one scored as `lingreg score` does by default (the whole model and a
float32 sum of every in-scope tensor on each rank, all-reduced at the end), one sharded with `importance.shard_model`
(`--shard fsdp`). The two score the same samples, alternating, and report per rank:

(1) the bytes of the float32 gradient sums it holds, counted from the sum buffers themselves (numel x element size;
    they are allocated once and live for the whole run, so this is their peak), and the same for the parameters;
    target: sharded sums at most (1/N + 5%) of the replicated ones;
(2) tokens/s over all ranks (sum_gradients plus the scores: all-reduce, or gather one tensor at a time), median of
    the alternating repeats, sharded / replicated.

    python bench/fsdp_memory.py [--world 2] [--hidden 512] [--layers 8] [--samples 32] [--seq-len 128] [--batch-size 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def _model(args):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 11 // 4,
        num_hidden_layers=args.layers,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=args.seq_len,
    )
    return LlamaForCausalLM(cfg).eval()


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def rank_worker(args) -> None:
    import torch
    import torch.distributed as dist

    from lm_eval_lingreg.anatomy import in_scope
    from lm_eval_lingreg.corpora import shard
    from lm_eval_lingreg.importance import global_importance, shard_model, sum_gradients

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(1)
    samples = torch.randint(3, args.vocab, (args.samples, args.seq_len)).tolist()
    mine = shard(samples, rank, world)
    models = {"replicated": _model(args), "sharded": _model(args)}
    shard_model(models["sharded"], "cpu")
    rates: dict[str, list[float]] = {k: [] for k in models}
    held: dict[str, dict[str, int]] = {}
    for _ in range(args.repeats):
        for name, model in models.items():
            dist.barrier()
            t0 = time.perf_counter()
            result = sum_gradients(model, mine, batch_size=args.batch_size)
            _, _, _, tokens = global_importance(model, result, distributed=True, keep=rank == 0)
            dist.barrier()
            rates[name].append(tokens / (time.perf_counter() - t0))
            params = [p.to_local() if hasattr(p, "to_local") else p for p in in_scope(model).values()]
            held[name] = {"sum_bytes": _bytes(result.grads.values()), "param_bytes": _bytes(params)}
            del result
    mine_figures = {"rank": rank, "held": held, "tokens_per_s": {k: statistics.median(v) for k, v in rates.items()}}
    everyone: list = [None] * world
    dist.all_gather_object(everyone, mine_figures)
    if rank == 0:
        print("FIGURES " + json.dumps(everyone))
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rank-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rank_worker:
        rank_worker(args)
        return
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("world", "rank_worker")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.world), __file__, "--rank-worker", *flags]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("FIGURES ")]
    if proc.returncode != 0 or not lines:
        sys.exit(proc.stderr[-3000:])
    ranks = json.loads(lines[-1][len("FIGURES ") :])
    full = ranks[0]["held"]["replicated"]["sum_bytes"]
    figures = {
        "world": args.world,
        "model": {k: getattr(args, k) for k in ("hidden", "layers", "vocab")},
        "samples": args.samples,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "replicated_sum_bytes_per_rank": full,
        "sharded_sum_bytes_per_rank": [r["held"]["sharded"]["sum_bytes"] for r in ranks],
        "sharded_over_replicated_sums": [r["held"]["sharded"]["sum_bytes"] / full for r in ranks],
        "target": 1 / args.world + 0.05,
        "sharded_over_replicated_params": [r["held"]["sharded"]["param_bytes"] / r["held"]["replicated"]["param_bytes"] for r in ranks],
        "tokens_per_s": ranks[0]["tokens_per_s"],
        "throughput_sharded_over_replicated": ranks[0]["tokens_per_s"]["sharded"] / ranks[0]["tokens_per_s"]["replicated"],
    }
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
