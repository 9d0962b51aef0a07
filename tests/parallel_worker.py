"""Run by tests/test_parallel.py, once in one process and once under `torchrun --nproc_per_node 2` with the model
loaded tensor-parallel (`tp_plan=auto`, DTensor weights): the same ablation and perturbations, their rolling
log-likelihoods, and whether each restore gave back the checkpoint's weights bit for bit.

    python tests/parallel_worker.py MODEL_DIR MASK OUT.json [tp]
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

TEXTS = [
    "All human beings are born free and equal in dignity and rights.",
    "Tous les êtres humains naissent libres et égaux en dignité et en droits.",
    "人人生而自由,在尊严和权利上一律平等。",
]


def perturbations(mask: str) -> list[str]:
    """One of each kind: entries of sharded weights (a row and a column split between the processes), a hidden
    dimension across every module, a norm's gain, a region (scaled, and seeded noise), activations."""
    return [
        "param=model.layers.0.self_attn.o_proj.weight:row=3:col=20:op=mul:value=-8",
        "param=model.layers.1.mlp.gate_proj.weight:index=1000:op=set:value=3",
        "layer=0:dim=5:op=mul:value=4",
        "layer=1:dim=7:modules=norms:op=mul:value=4:on=gain",
        f"mask={mask}:op=mul:value=-2",
        f"mask={mask}:op=noise:value=0.5:seed=3",
        "layer=0:dim=5:op=mul:value=8:on=activation",
        "layer=1:dim=3:op=mean:on=activation",
    ]


def rolling(lm) -> list[float]:
    from lm_eval.api.instance import Instance

    reqs = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(t,), idx=i) for i, t in enumerate(TEXTS)]
    return [float(x) for x in lm.loglikelihood_rolling(reqs, disable_tqdm=True)]


def as_in_checkpoint(model: torch.nn.Module, model_dir: Path) -> bool:
    """Every parameter this process holds (its shard of a DTensor) equals the checkpoint's, bit for bit."""
    from safetensors.torch import load_file

    from lm_eval_lingreg.anatomy import named_parameters
    from lm_eval_lingreg.edits import is_dtensor, local_part

    ref = load_file(model_dir / "model.safetensors")
    for name, p in named_parameters(model).items():
        want = ref[name]
        if is_dtensor(p.data):
            (chunk,) = p.data.__create_chunk_list__()
            want = want[tuple(slice(o, o + s) for o, s in zip(chunk.offsets, chunk.sizes, strict=True))]
        if not torch.equal(local_part(p), want):
            return False
    return True


def uneven_shards_map_exactly() -> bool:
    """`local_entries` on DTensors split unevenly (15 rows, 7 columns over the processes): each process's entries
    are the global ones at the indices it maps, and the processes together hold every chosen entry once. A DTensor
    with a pending reduction (Partial) is refused with one clear error."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Partial, Shard, distribute_tensor

    from lm_eval_lingreg.edits import local_entries
    from lm_eval_lingreg.errors import UsageError

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    full = torch.arange(15 * 7, dtype=torch.float32).view(15, 7)
    idx = torch.randperm(full.numel(), generator=torch.Generator().manual_seed(0))[:40]
    ok = True
    for dim in (0, 1):
        local = local_entries(distribute_tensor(full, mesh, [Shard(dim)]), idx)
        ok &= torch.equal(local.flat[local.indices], full.view(-1)[idx[local.positions]])
        held = torch.zeros(idx.numel(), dtype=torch.int64)
        held[local.positions] = 1
        dist.all_reduce(held)
        ok &= bool((held == 1).all())
    try:
        local_entries(DTensor.from_local(full, mesh, [Partial()]), idx)
        ok = False
    except UsageError as e:
        ok &= "pending reduction" in str(e)
    return bool(ok)


def main(model_dir: Path, mask: str, out: Path, tp: bool) -> None:
    from lm_eval_lingreg.anatomy import named_parameters
    from lm_eval_lingreg.edits import is_dtensor
    from lm_eval_lingreg.interventions import perturb
    from lm_eval_lingreg.models import RegionAblatedLM
    from lm_eval_lingreg.perturbation import parse_spec

    lm = RegionAblatedLM(pretrained=str(model_dir), mask=mask, batch_size=1, **({"tp_plan": "auto"} if tp else {"device": "cpu"}))
    res: dict = {"dtensors": sum(is_dtensor(p.data) for p in named_parameters(lm.model).values()), "ablated": rolling(lm)}
    res["entries_changed"] = lm.get_model_info()["lingreg"]["entries_changed"]
    lm.ablation.restore()
    res["exact"] = {"ablation": as_in_checkpoint(lm.model, model_dir)}
    res["base"] = rolling(lm)
    for spec in perturbations(mask):
        applied = perturb(lm.model, parse_spec(spec), tokenizer=lm.tokenizer)
        res[spec] = rolling(lm)
        applied.restore()
        res["exact"][spec] = as_in_checkpoint(lm.model, model_dir)
    if tp:
        res["uneven_shards"] = uneven_shards_map_exactly()
    rank = int(os.environ.get("RANK", "0"))
    Path(f"{out}.rank{rank}" if rank else out).write_text(json.dumps(res))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), sys.argv[4:] == ["tp"])
