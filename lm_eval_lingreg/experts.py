"""Mixture-of-experts models: how a region spreads over the experts, what each expert's neurons and router do
on calibration text, and the "language-specific experts" report.

transformers 5 stores the experts of Qwen3-MoE, OLMoE and Mixtral fused, as parameters of one experts module per
layer: `mlp.experts.gate_up_proj` (experts x 2*intermediate x hidden, gate rows then up rows) and
`mlp.experts.down_proj` (experts x hidden x intermediate), each expert's slice laid out as an nn.Linear weight; the
router is `mlp.gate.weight` (experts x hidden). A neuron of an MoE layer is (layer, expert, j); in a LAPE neuron
file it is the index `expert * intermediate + j` of its layer.

The experts' intermediate activations are computed inside the fused forward (a loop over experts, or one grouped
matmul, as the config's experts implementation chooses): no module hook sees them per expert. They are recomputed
here from what a hook does see, the experts module's call (hidden states, the experts each token is routed to),
with the module's own weights and activation function: act(x @ gate_e^T) for the tokens routed to expert e.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from lm_eval_lingreg.anatomy import experts_of, layer_module
from lm_eval_lingreg.errors import RegionError
from lm_eval_lingreg.regions import Region

__all__ = [
    "has_experts",
    "spread",
    "concentration",
    "spread_rows",
    "SPREAD_HEADERS",
    "spread_table",
]


def has_experts(shapes: Mapping[str, Sequence[int]]) -> bool:
    """Whether any tensor is a fused 3-D expert tensor."""
    return any(experts_of(n, s) > 1 for n, s in shapes.items())


def spread(region: Region) -> dict[int, dict[str, list[int]]]:
    """{layer: {"selected": region entries per expert, "entries": entries per expert}} over the layer's fused expert
    tensors (gate_up_proj and down_proj; the router is not an expert's)."""
    out: dict[int, dict[str, list[int]]] = {}
    for name, shape in region.shapes.items():
        experts = experts_of(name, shape)
        layer, _ = layer_module(name)
        if experts <= 1 or layer is None:
            continue
        size = math.prod(shape[1:])
        idx = region.indices.get(name, torch.zeros(0, dtype=torch.int64))
        counts = torch.bincount(idx // size, minlength=experts).tolist()
        row = out.setdefault(layer, {"selected": [0] * experts, "entries": [0] * experts})
        if len(row["selected"]) != experts:
            raise RegionError(f"{name}: {experts} experts, but another expert tensor of layer {layer} has {len(row['selected'])}")
        row["selected"] = [a + b for a, b in zip(row["selected"], counts, strict=True)]
        row["entries"] = [a + size for a in row["entries"]]
    return dict(sorted(out.items()))


def concentration(weights: Sequence[float]) -> dict[str, Any]:
    """How a non-negative weight over experts concentrates: the top expert, its share of the total, and the effective
    number of experts exp(entropy) (1: all on one expert; the number of experts: spread evenly)."""
    total = float(sum(weights))
    if total <= 0:
        return {"top": None, "top_share": 0.0, "effective": 0.0}
    p = [w / total for w in weights]
    top = max(range(len(p)), key=lambda e: (p[e], -e))
    return {"top": top, "top_share": p[top], "effective": math.exp(-sum(x * math.log(x) for x in p if x > 0))}


def spread_rows(region: Region) -> list[dict[str, Any]]:
    """One row per MoE layer: the region's entries in the experts, their concentration and the count per expert."""
    return [
        {"layer": layer, "experts": len(s["selected"]), "selected": sum(s["selected"]), "per_expert": s["selected"], **concentration(s["selected"])}
        for layer, s in spread(region).items()
    ]


#: The columns of `spread_table`.
SPREAD_HEADERS = ["layer", "entries in experts", "top expert (share)", "effective experts", "entries per expert"]


def _counts(values: Sequence[int], shown: int = 8) -> str:
    if len(values) <= shown:
        return " ".join(str(v) for v in values)
    top = sorted(range(len(values)), key=lambda e: (-values[e], e))[:shown]
    return ", ".join(f"e{e}:{values[e]}" for e in top) + ", ..."


def spread_table(region: Region) -> list[list[Any]]:
    """`spread_rows` as table rows: layer, entries in experts, top expert (share), effective experts, count per expert
    (the largest ones when there are many experts)."""
    return [
        [
            r["layer"],
            r["selected"],
            "-" if r["top"] is None else f"{r['top']} ({r['top_share']:.0%})",
            f"{r['effective']:.1f} of {r['experts']}",
            _counts(r["per_expert"]),
        ]
        for r in spread_rows(region)
    ]
