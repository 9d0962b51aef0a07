"""Run under torchrun by tests/test_sharded_scoring.py: several `lingreg score --shard fsdp` runs in one process group
(one launch costs seconds), then rank 0 records what the test checks beyond the score files.

    python -m torch.distributed.run --standalone --nproc_per_node N tests/fsdp_worker.py MODEL_DIR OUT [--activation-checkpointing]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lm_eval_lingreg.cli import main

RUNS = {
    "sample": ["--checkpoints", "4"],
    "batch-token": ["--loss-norm", "batch-token", "--checkpoints", "4"],
}


def score(model_dir: str, out: Path, langs: str, *options: str) -> None:
    args = ["score", "--pretrained", model_dir, "--langs", langs, "--samples", "7", "--batch-size", "2", "--device", "cpu", "--backend", "gloo"]
    if main([*args, "--shard", "fsdp", *options, "--out", str(out)]) != 0:
        raise SystemExit(f"lingreg score {' '.join(options)} failed")


def run(model_dir: str, out: Path, checkpointing: bool) -> None:
    import torch.distributed as dist

    score(model_dir, out / "sample", "zh", *RUNS["sample"])
    first = (out / "sample" / "zh.safetensors").stat().st_ino
    score(model_dir, out / "sample", "zh,ar", *RUNS["sample"])  # zh resumed by hash, ar scored
    score(model_dir, out / "batch-token", "zh,ar", *RUNS["batch-token"])
    if checkpointing:
        score(model_dir, out / "checkpointed", "zh,ar", "--activation-checkpointing")
    if dist.get_rank() == 0:
        (out / "worker.json").write_text(json.dumps({"zh_resumed": (out / "sample" / "zh.safetensors").stat().st_ino == first}))


if __name__ == "__main__":
    run(sys.argv[1], Path(sys.argv[2]), "--activation-checkpointing" in sys.argv[3:])
