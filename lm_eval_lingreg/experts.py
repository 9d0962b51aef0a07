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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lm_eval_lingreg.anatomy import base_model, experts_of, layer_index, layer_module
from lm_eval_lingreg.errors import RegionError
from lm_eval_lingreg.regions import Region

__all__ = [
    "has_experts",
    "spread",
    "concentration",
    "spread_rows",
    "SPREAD_HEADERS",
    "spread_table",
    "expert_modules",
    "ExpertStats",
    "expert_statistics",
    "routing_share",
    "language_experts",
    "report_markdown",
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


def _counts(values: Sequence[float], shown: int = 8, fmt: str = "{}") -> str:
    """Every value in expert order, or the `shown` largest as `e<expert>:<value>` when there are more experts."""
    if len(values) <= shown:
        return " ".join(fmt.format(v) for v in values)
    top = sorted(range(len(values)), key=lambda e: (-values[e], e))[:shown]
    return ", ".join(f"e{e}:{fmt.format(values[e])}" for e in top) + ", ..."


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


# what the experts do on calibration text ------------------------------------------------------------------------------


def expert_modules(model: torch.nn.Module) -> dict[int, tuple[str, torch.nn.Module]]:
    """{layer: (name, module)} of the fused experts modules (`layers.<n>.mlp.experts` with a 3-D `gate_up_proj`),
    in layer order; empty for a dense model. A layout other than transformers' default (gate and up rows
    concatenated, not transposed, no bias) is refused: the recomputed activations would not be the model's."""
    out = {}
    for name, module in base_model(model).named_modules():
        layer = layer_index(name, ".mlp.experts")
        weight = getattr(module, "gate_up_proj", None)
        if layer is None or not isinstance(weight, torch.Tensor) or weight.dim() != 3:
            continue
        layout = {"is_transposed": False, "is_concatenated": True, "has_gate": True, "has_bias": False}
        odd = [f"{k}={getattr(module, k)}" for k, v in layout.items() if getattr(module, k, v) != v]
        if odd or not hasattr(module, "act_fn"):
            raise RegionError(
                f"{name} ({type(module).__name__}) stores its experts as {', '.join(odd) or 'no act_fn'}; per-expert activations are computed "
                "for experts stored as Qwen3-MoE, OLMoE and Mixtral store them (gate rows then up rows, each expert's slice an nn.Linear weight)"
            )
        out[layer] = (name, module)
    return dict(sorted(out.items()))


@dataclass
class ExpertStats:
    """What the experts of each MoE layer did over the real tokens of some text."""

    layers: list[int]  # the MoE layers, in order (rows of the tensors below)
    tokens: int  # real tokens seen
    routed: torch.Tensor  # (layers, experts): tokens routed to each expert (a token counts in each of its top-k experts)
    active: torch.Tensor | None  # (layers, experts, intermediate): routed tokens whose act(gate) is positive, per neuron
    #: with `inputs`, sums of squares of each expert's inputs over its routed tokens: the hidden states (layers, experts,
    #: hidden), read by gate_up_proj, and act(gate) * up (layers, experts, intermediate), read by down_proj; and of
    #: the hidden states of every token (layers, hidden), read by the router
    hidden_sq: torch.Tensor | None = None
    inner_sq: torch.Tensor | None = None
    router_sq: torch.Tensor | None = None


def _call_parts(call: tuple[tuple, dict]) -> tuple[torch.Tensor, torch.Tensor]:
    args, kwargs = call
    hidden = args[0] if args else kwargs["hidden_states"]
    index = args[1] if len(args) > 1 else kwargs["top_k_index"]
    return hidden, index


def expert_statistics(
    model: torch.nn.Module,
    samples: Sequence[Sequence[int]],
    neurons: bool = True,
    batch_size: int = 4,
    pad_id: int = 0,
    progress: Callable[[int], None] | None = None,
    inputs: bool = False,
) -> ExpertStats:
    """Routing counts per expert and, with `neurons`, how often each expert neuron fires (act(gate) > 0) on the
    tokens routed to its expert, and with `inputs` the squared norms of each expert's inputs (Wanda's statistic),
    over the real tokens of `samples`: one forward pass of the model body, the experts' calls captured by a hook
    and their activations recomputed with the module's own weights."""
    from lm_eval_lingreg.capture import activation_pass

    modules = expert_modules(model)
    if not modules:
        raise RegionError("this model has no fused experts (layers.<n>.mlp.experts with 3-D weights): it is not a mixture-of-experts model")
    first = next(iter(modules.values()))[1].gate_up_proj
    experts, inter = int(first.shape[0]), int(first.shape[1]) // 2
    routed = torch.zeros(len(modules), experts, dtype=torch.float64)
    active = torch.zeros(len(modules), experts, inter, dtype=torch.float64) if neurons else None
    hidden_sq = torch.zeros(len(modules), experts, int(first.shape[2]), dtype=torch.float64) if inputs else None
    inner_sq = torch.zeros(len(modules), experts, inter, dtype=torch.float64) if inputs else None
    router_sq = torch.zeros(len(modules), int(first.shape[2]), dtype=torch.float64) if inputs else None

    def collector(row: int, name: str, module: torch.nn.Module):
        if tuple(module.gate_up_proj.shape[:2]) != (experts, 2 * inter):
            raise RegionError(f"{name}: {tuple(module.gate_up_proj.shape)} experts differ from the first MoE layer's ({experts}, {2 * inter}, ...)")

        @torch.no_grad()
        def add(call: tuple[tuple, dict], keep: torch.Tensor) -> None:
            hidden, index = _call_parts(call)
            if hidden.shape[0] != keep.numel():
                raise RegionError(f"{name} was called with {hidden.shape[0]} tokens for a batch of {keep.numel()}: its input is not the flattened batch")
            hidden, index = hidden[keep], index[keep].long()
            hit = torch.nn.functional.one_hot(index, experts + 1).sum(1)[:, :experts] > 0  # index == experts marks no expert
            routed[row] += hit.sum(0).to("cpu", torch.float64)
            if router_sq is not None:
                router_sq[row] += hidden.double().pow(2).sum(0).cpu()
            if active is None and hidden_sq is None:
                return
            for e in range(experts):
                rows = hit[:, e]
                if not rows.any():
                    continue
                x = hidden[rows]
                gate = module.act_fn(torch.nn.functional.linear(x, module.gate_up_proj[e, :inter]))
                if active is not None:
                    active[row, e] += (gate > 0).sum(0).to("cpu", torch.float64)
                if hidden_sq is not None:
                    inner = gate * torch.nn.functional.linear(x, module.gate_up_proj[e, inter:])
                    hidden_sq[row, e] += x.double().pow(2).sum(0).cpu()
                    inner_sq[row, e] += inner.double().pow(2).sum(0).cpu()

        return add

    collect = {name: collector(row, name, module) for row, (name, module) in enumerate(modules.values())}
    tokens = activation_pass(model, samples, collect, "call", batch_size, pad_id, progress)
    if not tokens:
        raise RegionError("the calibration samples hold no tokens; give real text")
    return ExpertStats(list(modules), tokens, routed, active, hidden_sq, inner_sq, router_sq)


def routing_share(stats: ExpertStats) -> torch.Tensor:
    """(layers, experts): each expert's share of the layer's routing choices (rows sum to 1)."""
    return stats.routed / stats.routed.sum(-1, keepdim=True).clamp_min(1)


# the language-specific experts report ----------------------------------------------------------------------------------


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    x, y = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    denom = float(x.norm() * y.norm())
    return float(x @ y) / denom if denom else float("nan")


def language_experts(routing: Mapping[str, torch.Tensor], layers: Sequence[int], regions: Mapping[str, Region] | None = None) -> dict[str, Any]:
    """Per language and MoE layer: where its routing goes (top expert, share, effective experts), how its
    monolingual region spreads over the experts (the same measures), and the cosine between the two
    distributions; per layer and expert, the language routed there most, and how far above the mean over
    languages its share is (1: no language prefers the expert)."""
    regions = dict(regions or {})
    langs = list(routing)
    spreads = {lang: spread(r) for lang, r in regions.items()}
    per_lang: dict[str, list[dict[str, Any]]] = {}
    for lang in langs:
        rows = []
        for i, layer in enumerate(layers):
            share = routing[lang][i].tolist()
            row: dict[str, Any] = {"layer": layer, "routing_share": share, "routing": concentration(share)}
            if lang in spreads and layer in spreads[lang]:
                counts = spreads[lang][layer]["selected"]
                row |= {"region_per_expert": counts, "region": concentration(counts), "cosine": _cosine(counts, share)}
            rows.append(row)
        per_lang[lang] = rows
    stacked = torch.stack([routing[lang] for lang in langs])  # (languages, layers, experts)
    mean = stacked.mean(0).clamp_min(1e-12)
    best = stacked.argmax(0)
    experts = [
        [
            {
                "expert": e,
                "language": langs[int(best[i, e])],
                "share": float(stacked[best[i, e], i, e]),
                "over_mean": float(stacked[best[i, e], i, e] / mean[i, e]),
            }
            for e in range(stacked.shape[2])
        ]
        for i in range(len(layers))
    ]
    return {"languages": langs, "layers": list(layers), "per_language": per_lang, "per_expert": dict(zip(layers, experts, strict=True))}


def report_markdown(report: Mapping[str, Any], top: int = 5) -> str:
    """The `language_experts` report as Markdown: one table per language, then the most language-specific experts."""
    lines = [
        "# Language-specific experts",
        "",
        "Routing: each expert's share of a layer's top-k choices over the language's calibration tokens. Region: the language's "
        "monolingual region's entries in each expert (fused expert tensors). Effective experts: exp(entropy) of the distribution "
        "(1: one expert; all experts: spread evenly). Cosine: between the region's counts and the routing shares over experts.",
    ]
    for lang in report["languages"]:
        lines += [
            "",
            f"## {lang}",
            "",
            "| layer | routing share per expert | routing: top expert (share) | routing: effective experts "
            "| region entries per expert | region: top expert (share) | region: effective experts | cosine |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in report["per_language"][lang]:
            n = len(r["routing_share"])
            cells = [str(r["layer"]), _counts(r["routing_share"], fmt="{:.0%}"), _top(r["routing"]), f"{r['routing']['effective']:.1f} of {n}"]
            if "region" in r:
                cells += [_counts(r["region_per_expert"]), _top(r["region"]), f"{r['region']['effective']:.1f} of {n}", f"{r['cosine']:.2f}"]
            else:
                cells += ["-"] * 4
            lines.append("| " + " | ".join(cells) + " |")
    ranked = sorted(((layer, e) for layer, row in report["per_expert"].items() for e in row), key=lambda t: -t[1]["over_mean"])[:top]
    lines += [
        "",
        "## The most language-specific experts",
        "",
        "| layer | expert | language | its routing share | times the mean over languages |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {layer} | {e['expert']} | {e['language']} | {e['share']:.1%} | {e['over_mean']:.2f} |" for layer, e in ranked]
    return "\n".join(lines) + "\n"


def _top(c: Mapping[str, Any]) -> str:
    return "-" if c["top"] is None else f"{c['top']} ({c['top_share']:.0%})"
