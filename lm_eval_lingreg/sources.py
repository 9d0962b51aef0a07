"""Other published definitions of a region, each built as an ordinary `Region` over the same scope
as the core region, so that `hf-region-ablated`, `mask compare`, freezing and every report use
them unchanged:

- `magnitude`: top or bottom |W| per tensor;
- `wanda` (Sun et al. 2024): |W_ij| * ||X_j||_2, the weight times the L2 norm of its input feature over
  calibration tokens; per tensor like the core region, or per output row (Wanda's own unit). A fused
  expert tensor's inputs are those of each expert, over the tokens routed to it (a second forward pass);
  a router's are the hidden states of every token;
- `lape` (Tang et al. 2024): FFN neurons chosen by language activation probability entropy; a neuron
  is its `down_proj` column (zeroing the column is zeroing the neuron's activation), optionally with
  its `gate_proj`/`up_proj` rows (rows j and intermediate + j of a fused `gate_up_proj`, as Phi-3's).
  In a mixture-of-experts layer a neuron is (layer, expert, j), index `expert * intermediate + j` of its
  layer in a neuron file; its probability counts the tokens routed to its expert where it fires, over
  all the language's tokens (see `experts`);
- `super-weight` (Yu et al. 2024): single `down_proj` entries found from activation spikes on a
  prompt, or imported as (layer, row, col) coordinates.

Activation statistics come from one forward pass of the model body over the calibration text (no
head, no backward); each is accumulated per layer as it passes (one vector per linear layer), never
kept as all activations at once. LAPE neuron files (`*.neuron.pth`, a list per language of a list per
layer of index tensors) are read with `torch.load(weights_only=True)`: no pickled code runs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from lm_eval_lingreg.anatomy import DEFAULT_SCOPE, base_model, compile_scope, experts_of, in_scope, layer_index, scope_shapes
from lm_eval_lingreg.capture import activation_pass, body, hooked
from lm_eval_lingreg.errors import RegionError, RegionFileError
from lm_eval_lingreg.regions import Region
from lm_eval_lingreg.selection import check_ratio, select_tensor

__all__ = [
    "SOURCES",
    "LAPE_TOP_RATE",
    "LAPE_FILTER_RATE",
    "LAPE_BAR_RATE",
    "select_magnitude",
    "input_norms",
    "select_wanda",
    "activation_probabilities",
    "check_lape_rates",
    "lape_neurons",
    "load_lape",
    "down_projs",
    "layer_neurons",
    "lape_region",
    "load_coordinates",
    "coordinates_region",
    "MAX_PROMPT_TOKENS",
    "detect_super_weights",
    "shapes_of",
]

SOURCES = ("magnitude", "wanda", "lape", "super-weight")
#: LAPE's published thresholds (RUCAIBox/Language-Specific-Neurons, identify.py).
LAPE_TOP_RATE = 0.01
LAPE_FILTER_RATE = 0.95
LAPE_BAR_RATE = 0.95
_DOWN_PROJ = ".mlp.down_proj.weight"  # after layers.<n>: the FFN down projection LAPE and super weights address
_EXPERTS_DOWN_PROJ = ".mlp.experts.down_proj"  # after layers.<n>: the fused down projections of a layer's experts


def _which(which: str) -> str:
    if which not in ("top", "bottom"):
        raise RegionError(f"this source selects the top or bottom entries, not {which!r}")
    return which


# magnitude ------------------------------------------------------------------------------------


def select_magnitude(model: torch.nn.Module, ratio: float, which: str = "top", scope: str = DEFAULT_SCOPE, metadata: Mapping | None = None) -> Region:
    """Per tensor, the `int(ratio * numel)` entries of largest (or smallest) |W|."""
    ratio, which = check_ratio(ratio), _which(which)
    indices, shapes = {}, {}
    for name, p in in_scope(model, scope).items():
        shapes[name] = tuple(p.shape)
        indices[name] = select_tensor(p.detach().abs().float().cpu(), int(ratio * p.numel()), which)
    return Region(indices, shapes, {"kind": f"magnitude-{which}", "ratio": ratio, "scope": scope, **(metadata or {})})


# activation statistics ------------------------------------------------------------------------


def _linear_modules(model: torch.nn.Module, scope: str) -> dict[str, str]:
    """{module name: weight parameter name} of the linear layers whose weight is in scope."""
    pattern = compile_scope(scope)
    out = {}
    for name, module in base_model(model).named_modules():
        if isinstance(module, torch.nn.Linear) and ".lora_" not in name:
            pname = f"{name}.weight".replace(".base_layer.", ".")
            if pattern.search(pname):
                out[name] = pname
    if not out:
        raise RegionError(f"no linear layer of this model has its weight in the scope {scope!r}")
    return out


def input_norms(
    model: torch.nn.Module,
    samples: Sequence[Sequence[int]],
    scope: str = DEFAULT_SCOPE,
    batch_size: int = 4,
    pad_id: int = 0,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, torch.Tensor], int]:
    """({weight name: ||X_j||_2 per input feature j}, tokens) over every real token of `samples`,
    for each in-scope linear layer: Wanda's activation statistic, accumulated in float32 per layer."""
    linear = _linear_modules(model, scope)
    sums: dict[str, torch.Tensor] = {}

    def adder(module: str):
        def add(x: torch.Tensor, keep: torch.Tensor) -> None:
            sq = x[keep].float().pow(2).sum(0)
            sums[module] = sq if module not in sums else sums[module].add_(sq)

        return add

    tokens = activation_pass(model, samples, {m: adder(m) for m in linear}, "input", batch_size, pad_id, progress)
    if not tokens:
        raise RegionError("the calibration samples hold no tokens; give real text")
    return {linear[m]: s.sqrt().cpu() for m, s in sums.items()} | _expert_input_norms(model, samples, scope, batch_size, pad_id), tokens


def _expert_input_norms(model: torch.nn.Module, samples: Sequence[Sequence[int]], scope: str, batch_size: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Wanda's statistic for the in-scope fused expert tensors (per expert, (experts, in_features)) and routers
    (the hidden states of every token), from one more forward pass; empty for a dense model."""
    from lm_eval_lingreg.experts import expert_modules, expert_statistics

    modules = expert_modules(model)
    params = in_scope(model, scope)
    wanted = {f"{name}.{p}" for name, _ in modules.values() for p in ("gate_up_proj", "down_proj")} | {
        f"{name.removesuffix('.experts')}.gate.weight" for name, _ in modules.values()
    }
    if not wanted & set(params):
        return {}
    stats = expert_statistics(model, samples, neurons=False, batch_size=batch_size, pad_id=pad_id, inputs=True)
    out = {}
    for row, (name, _) in enumerate(modules.values()):
        out[f"{name}.gate_up_proj"] = stats.hidden_sq[row].sqrt().float()
        out[f"{name}.down_proj"] = stats.inner_sq[row].sqrt().float()
        router = f"{name.removesuffix('.experts')}.gate.weight"
        out[router] = stats.router_sq[row].sqrt().float()
    return {n: v for n, v in out.items() if n in params}


def select_wanda(
    model: torch.nn.Module,
    norms: Mapping[str, torch.Tensor],
    ratio: float,
    which: str = "top",
    per_row: bool = False,
    scope: str = DEFAULT_SCOPE,
    metadata: Mapping | None = None,
) -> Region:
    """Top (or bottom) entries of |W_ij| * ||X_j||: `int(ratio * numel)` per tensor, or with `per_row`
    `int(ratio * in_features)` in each output row (Wanda's comparison group). In-scope tensors that
    are not linear weights (norm gains) have no input features and get no entry."""
    ratio, which = check_ratio(ratio), _which(which)
    params = in_scope(model, scope)
    indices, shapes = {}, {}
    for name, p in params.items():
        shapes[name] = tuple(p.shape)
        if name not in norms:
            indices[name] = torch.zeros(0, dtype=torch.long)
            continue
        n = norms[name].to(torch.float32)
        if p.dim() not in (2, 3) or n.shape != (*p.shape[:-2], p.shape[-1]):
            raise RegionError(f"{name}: activation norms of shape {tuple(n.shape)} do not fit the weight {tuple(p.shape)}")
        score = p.detach().float().cpu().abs() * n.unsqueeze(-2)  # a fused expert tensor: each expert's own input norms
        if per_row:
            rows, width = score.reshape(-1, p.shape[-1]), p.shape[-1]
            k = int(ratio * width)
            cols = torch.topk(rows, k, dim=1, largest=which == "top").indices if k else torch.zeros(rows.shape[0], 0, dtype=torch.long)
            flat = (torch.arange(rows.shape[0])[:, None] * width + cols).reshape(-1)
            indices[name] = torch.sort(flat).values
        else:
            indices[name] = select_tensor(score, int(ratio * p.numel()), which)
    if not any(v.numel() for v in indices.values()):
        raise RegionError(
            f"ratio {ratio} selects no entry ({'ratio x in_features < 1 in every row' if per_row else 'every tensor is too small'}); raise --ratio"
        )
    meta = {"kind": f"wanda-{which}", "ratio": ratio, "per_row": bool(per_row), "scope": scope, **(metadata or {})}
    return Region(indices, shapes, meta)


# LAPE -----------------------------------------------------------------------------------------


def _act_name(module: torch.nn.Module) -> str | None:
    """The activation submodule of a gated FFN block: `act_fn`, or Phi-3's `activation_fn` (on the gate half of its fused gate_up_proj)."""
    return next((a for a in ("act_fn", "activation_fn") if isinstance(getattr(module, a, None), torch.nn.Module)), None)


def _mlp_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(name, mlp) of each decoder layer, in layer order, with an activation module, `gate_proj` (or a fused
    `gate_up_proj`) and `down_proj` linear layers."""
    out = []
    for name, module in base_model(model).named_modules():
        index = layer_index(name, ".mlp")
        if index is not None and _act_name(module) and isinstance(getattr(module, "down_proj", None), torch.nn.Module):
            if any(isinstance(getattr(module, g, None), torch.nn.Module) for g in ("gate_proj", "gate_up_proj")):
                out.append((index, name, module))
    if not out:
        raise RegionError(
            "this needs dense gated FFN blocks (layers.<n>.mlp with act_fn, gate_proj or gate_up_proj, down_proj), as in Llama, Gemma, Qwen, "
            "Mistral and Phi-3; a mixture-of-experts model's FFN neurons are read per expert by `extract lape`, and super weights address dense down_proj only"
        )
    return [(n, mod) for _, n, mod in sorted(out, key=lambda t: t[0])]


def _decoder_mlps(model: torch.nn.Module) -> int:
    return sum(1 for name, _ in base_model(model).named_modules() if layer_index(name, ".mlp") is not None)


def activation_probabilities(
    model: torch.nn.Module,
    samples_by_lang: Mapping[str, Sequence[Sequence[int]]],
    batch_size: int = 4,
    pad_id: int = 0,
    progress: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, dict[str, int]]:
    """P(act_fn(gate_proj(x))_j > 0) over the real tokens of each language: (layers, neurons, languages),
    and the tokens per language (LAPE's activation.py, through Hugging Face modules instead of vLLM).
    In a mixture-of-experts model the neurons of a layer are its experts' (`expert * intermediate + j`), each
    firing only on the tokens routed to its expert (`experts.expert_statistics`)."""
    from lm_eval_lingreg.experts import expert_modules, expert_statistics

    langs = list(samples_by_lang)
    moe = expert_modules(model)
    if moe:
        if len(moe) != _decoder_mlps(model):
            raise RegionError(f"LAPE per expert needs every layer to be a mixture of experts; {len(moe)} of {_decoder_mlps(model)} layers are")
        columns, tokens = [], {}
        for lang in langs:
            stats = expert_statistics(model, samples_by_lang[lang], True, batch_size, pad_id, progress)
            columns.append(stats.active.reshape(len(moe), -1) / stats.tokens)
            tokens[lang] = stats.tokens
        return torch.stack(columns, -1), tokens
    mlps = _mlp_modules(model)
    probs = torch.zeros(len(mlps), mlps[0][1].down_proj.in_features, len(langs), dtype=torch.float64)
    tokens = {}
    for li, lang in enumerate(langs):
        counts = torch.zeros(len(mlps), probs.shape[1], dtype=torch.float64)

        def counter(i: int, counts: torch.Tensor = counts):
            def add(y: torch.Tensor, keep: torch.Tensor) -> None:
                counts[i] += (y[keep] > 0).sum(0).to("cpu", torch.float64)

            return add

        collect = {f"{name}.{_act_name(mlp)}": counter(i) for i, (name, mlp) in enumerate(mlps)}
        n = activation_pass(model, samples_by_lang[lang], collect, "output", batch_size, pad_id, progress)
        if not n:
            raise RegionError(f"the calibration samples of {lang} hold no tokens; give real text")
        probs[:, :, li] = counts / n
        tokens[lang] = n
    return probs, tokens


def check_lape_rates(top_rate: float, filter_rate: float, bar_rate: float) -> None:
    for what, v in (("top_rate", top_rate), ("filter_rate", filter_rate), ("bar_rate", bar_rate)):
        if not 0.0 < v < 1.0:
            raise RegionError(f"LAPE {what} must be in (0, 1), got {v}")


def lape_neurons(
    probs: torch.Tensor, top_rate: float = LAPE_TOP_RATE, filter_rate: float = LAPE_FILTER_RATE, bar_rate: float = LAPE_BAR_RATE
) -> list[list[torch.Tensor]]:
    """LAPE's selection (identify.py): normalise each neuron's activation probabilities over languages,
    take its entropy; neurons whose probability exceeds the `filter_rate` quantile in no language are
    dismissed; the `top_rate` share of lowest-entropy neurons is kept, and each is assigned to every
    language where its probability exceeds the `bar_rate` quantile. Returns, per language, per layer,
    the sorted neuron indices (the layout of LAPE's `*.neuron.pth` files)."""
    check_lape_rates(top_rate, filter_rate, bar_rate)
    layers, neurons, nlang = probs.shape
    if nlang < 2:
        raise RegionError("LAPE compares languages: give at least two")
    p = probs.to(torch.float64)
    normed = p / p.sum(-1, keepdim=True)
    normed = torch.nan_to_num(normed, nan=0.0)
    logs = torch.where(normed > 0, normed.log(), torch.zeros_like(normed))
    entropy = -(normed * logs).sum(-1)
    flat = p.flatten()
    filter_value = flat.kthvalue(max(1, round(flat.numel() * filter_rate))).values.item()
    entropy[(p > filter_value).sum(-1) == 0] = math.inf
    k = max(1, round(entropy.numel() * top_rate))
    index = entropy.flatten().topk(k, largest=False).indices
    index = index[torch.isfinite(entropy.flatten()[index])]
    rows, cols = index // neurons, index % neurons
    bar = flat.kthvalue(max(1, round(flat.numel() * bar_rate))).values.item()
    selected = p[rows, cols] > bar  # (k, languages)
    out = []
    for lang in range(nlang):
        chosen = selected[:, lang]
        per_layer = [[] for _ in range(layers)]
        for r, c in zip(rows[chosen].tolist(), cols[chosen].tolist(), strict=True):
            per_layer[r].append(c)
        out.append([torch.tensor(sorted(c), dtype=torch.long) for c in per_layer])
    return out


def load_lape(path: str | os.PathLike) -> list[list[torch.Tensor]]:
    """A LAPE `*.neuron.pth` file: per language, per layer, a 1-D integer tensor of neuron indices."""
    from lm_eval_lingreg.region_io import check_backed, torch_load

    path = Path(path)
    if not path.exists():
        raise RegionFileError(f"{path}: no such LAPE neuron file")
    if not path.is_file():
        raise RegionFileError(f"{path} is not a regular file (a pipe or device?); give a LAPE *.neuron.pth file")
    data = torch_load(path, RegionFileError, "LAPE files hold a list (languages) of lists (layers) of index tensors.")
    if not isinstance(data, (list, tuple)) or not data or not all(isinstance(lang, (list, tuple)) for lang in data):
        raise RegionFileError(f"{path}: not a LAPE neuron file: expected a list (one per language) of lists (one per layer) of index tensors")
    layers = {len(lang) for lang in data}
    if len(layers) != 1:
        raise RegionFileError(f"{path}: the languages list different numbers of layers ({sorted(layers)})")
    out = []
    for li, lang in enumerate(data):
        row = []
        for layer, t in enumerate(lang):
            if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
                got = f"a {t.dim()}-D {t.dtype} tensor" if isinstance(t, torch.Tensor) else type(t).__name__
                raise RegionFileError(f"{path}: language {li}, layer {layer}: expected a 1-D integer tensor of neuron indices, got {got}")
            check_backed(t, f"language {li}, layer {layer}", path)
            t = t.to(torch.long)
            if t.numel() and int(t.min()) < 0:
                raise RegionFileError(f"{path}: language {li}, layer {layer}: negative neuron index {int(t.min())}")
            row.append(t)
        out.append(row)
    return out


def down_projs(shapes: Mapping[str, tuple[int, ...]], experts: bool = True) -> dict[int, str]:
    """{layer: name} of the FFN down projections: `mlp.down_proj.weight`, and (with `experts`) a mixture-of-experts
    layer's fused `mlp.experts.down_proj`."""
    out = {i: n for n in shapes if (i := layer_index(n, _DOWN_PROJ)) is not None}
    if experts:
        out |= {i: n for n in shapes if (i := layer_index(n, _EXPERTS_DOWN_PROJ)) is not None}
    if not out:
        raise RegionError(
            "no layers.<n>.mlp.down_proj.weight"
            + (" or layers.<n>.mlp.experts.down_proj" if experts else "")
            + " among the model's parameters (in scope): LAPE and super weights address FFN down projections"
        )
    return out


def layer_neurons(name: str, shape: Sequence[int]) -> int:
    """The FFN neurons of a layer, from its down projection: its columns, times the experts of a fused expert tensor."""
    return experts_of(name, shape) * int(shape[-1])


def lape_region(
    neurons: Sequence[Sequence[torch.Tensor]],
    shapes: Mapping[str, tuple[int, ...]],
    langs: Sequence[int] | None = None,
    gate_up: bool = False,
    metadata: Mapping | None = None,
) -> Region:
    """The region of LAPE neurons: their `down_proj` columns (and with `gate_up` their `gate_proj` and
    `up_proj` rows), for the languages at positions `langs` of the file (default: the union of all)."""
    downs = down_projs(shapes)
    chosen = list(range(len(neurons))) if langs is None else list(langs)
    for i in chosen:
        if not 0 <= i < len(neurons):
            raise RegionError(f"language position {i} is not in the LAPE file (it lists {len(neurons)} languages, positions 0..{len(neurons) - 1})")
    if neurons and len(neurons[0]) != len(downs):
        raise RegionError(
            f"the LAPE file lists {len(neurons[0])} layers but the model has {len(downs)} FFN down projections in scope: it was made for another "
            "model (or --scope leaves layers out)"
        )
    indices: dict[str, list[torch.Tensor]] = {}
    for layer, down in sorted(downs.items()):
        hidden, inter = shapes[down][-2:]
        cols = torch.unique(torch.cat([neurons[i][layer] for i in chosen] or [torch.zeros(0, dtype=torch.long)]))
        total = layer_neurons(down, shapes[down])
        if cols.numel() and int(cols.max()) >= total:
            raise RegionError(f"layer {layer}: neuron {int(cols.max())} is out of range for {down} ({total} neurons): the file was made for another model")
        expert, j = cols // inter, cols % inter  # expert 0 in a dense layer
        indices.setdefault(down, []).append(((expert * hidden * inter + j)[None, :] + torch.arange(hidden)[:, None] * inter).reshape(-1))
        if gate_up:
            for name, rows in _gate_up_rows(down, shapes, expert, j, inter):
                width = shapes[name][-1]
                indices.setdefault(name, []).append((rows[:, None] * width + torch.arange(width)[None, :]).reshape(-1))
    flat = {n: torch.cat(v) for n, v in indices.items()}
    if not any(v.numel() for v in flat.values()):
        raise RegionError("the LAPE neurons chosen are none: this language (or file) selects no neuron; pick another --lang or lower the LAPE thresholds")
    meta = {"kind": "lape", "languages_in_file": len(neurons), "language_positions": chosen, "gate_up": bool(gate_up), **(metadata or {})}
    return Region.from_indices(flat, shapes, meta)


def _gate_up_rows(down: str, shapes: Mapping[str, tuple[int, ...]], expert: torch.Tensor, j: torch.Tensor, inter: int) -> list[tuple[str, torch.Tensor]]:
    """(tensor, flat row indices) of neurons (expert, j) in the gate and up projections beside `down`: rows j of
    `gate_proj` and `up_proj`, or rows j and inter + j (gate, then up) of a fused `gate_up_proj` (per expert)."""
    fused = down.replace("down_proj", "gate_up_proj")
    if fused in shapes:
        rows_per_expert = shapes[fused][-2]
        if rows_per_expert != 2 * inter:
            raise RegionError(f"--gate-up: {fused} has {rows_per_expert} rows per expert, not 2 x {inter} (gate rows then up rows)")
        return [(fused, torch.cat([expert * rows_per_expert + j, expert * rows_per_expert + inter + j]))]
    out = []
    for proj in ("gate_proj", "up_proj"):
        name = down.replace("down_proj", proj)
        if name not in shapes:
            raise RegionError(f"--gate-up: the model has no {name} or {fused} (in scope)")
        out.append((name, j))
    return out


# super weights --------------------------------------------------------------------------------


def load_coordinates(path: str | os.PathLike) -> list[tuple[int, int, int]]:
    """Super-weight coordinates from JSON or YAML: a list of [layer, row, col] or of
    {"layer":, "row":, "col":} (optionally under a "super_weights" key)."""
    path = Path(path)
    if not path.exists():
        raise RegionFileError(f"{path}: no such coordinates file")
    if not path.is_file():
        raise RegionFileError(f"{path} is not a regular file (a pipe or device?); give a JSON or YAML coordinates file")
    from lm_eval_lingreg.strict import loads_json, loads_yaml, read_text

    text = read_text(path, RegionFileError, "coordinates file", max_bytes=10_000_000)
    data = loads_yaml(text, RegionFileError, str(path)) if path.suffix in (".yaml", ".yml") else loads_json(text, RegionFileError, str(path), finite=True)
    if isinstance(data, dict) and "super_weights" in data:
        data = data["super_weights"]
    if not isinstance(data, list) or not data:
        raise RegionFileError(f"{path}: expected a list of [layer, row, col] coordinates")
    out = []
    for i, item in enumerate(data):
        if isinstance(item, dict):
            item = [item.get(k) for k in ("layer", "row", "col")]
        if not isinstance(item, (list, tuple)) or len(item) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in item):
            shown = (
                ", ".join(repr(v)[:20] if isinstance(v, (int, float, str, bool)) or v is None else type(v).__name__ for v in item[:4])
                if isinstance(item, (list, tuple))
                else type(item).__name__
            )
            raise RegionFileError(f"{path}: entry {i} is not [layer, row, col] of whole numbers >= 0 (got {shown[:80]})")
        out.append(tuple(item))
    return out


def coordinates_region(coords: Iterable[tuple[int, int, int]], shapes: Mapping[str, tuple[int, ...]], metadata: Mapping | None = None) -> Region:
    """Single `down_proj` entries: (layer, row, col) is `layers.<layer>.mlp.down_proj.weight[row, col]` (dense layers)."""
    downs = down_projs(shapes, experts=False)
    coords = sorted({tuple(int(v) for v in c) for c in coords})
    indices: dict[str, list[int]] = {}
    for layer, row, col in coords:
        if layer not in downs:
            raise RegionError(
                f"super weight ({layer}, {row}, {col}): no layers.{layer}.mlp.down_proj.weight among the model's parameters in scope "
                f"(layers {min(downs)}..{max(downs)}); widen --scope, or the coordinates are for another model"
            )
        rows, cols = shapes[downs[layer]]
        if row >= rows or col >= cols:
            raise RegionError(
                f"super weight ({layer}, {row}, {col}) is outside {downs[layer]} of shape ({rows}, {cols}): the coordinates are for another model"
            )
        indices.setdefault(downs[layer], []).append(row * cols + col)
    meta = {"kind": "super-weight", "coordinates": [list(c) for c in coords], **(metadata or {})}
    return Region.from_indices({n: torch.tensor(v, dtype=torch.long) for n, v in indices.items()}, shapes, meta)


#: The longest prompt `detect_super_weights` takes: one forward pass over it, the activations of a layer at a time.
MAX_PROMPT_TOKENS = 2048


def detect_super_weights(model: torch.nn.Module, input_ids: Sequence[int], spike: float = 10.0, top: int = 3) -> list[dict[str, Any]]:
    """Super-weight candidates from one prompt (Yu et al. 2024): in each layer, the largest |input| and
    |output| of `down_proj` over the prompt's tokens, with the channels where they occur. A layer whose
    largest |output| is more than `spike` times the median over layers is a spike; its super weight is
    `down_proj[output channel, input channel]`. Returns at most `top` candidates, strongest first,
    each with the layer, row, col and the two activation magnitudes."""
    if not spike > 1.0:
        raise RegionError(f"spike must be a factor above 1, got {spike}")
    if not input_ids:
        raise RegionError("the prompt holds no tokens")
    if len(input_ids) > MAX_PROMPT_TOKENS:
        raise RegionError(
            f"the prompt holds {len(input_ids):,} tokens; super weights show on one short prompt "
            f"(a sentence is enough): give at most {MAX_PROMPT_TOKENS:,} tokens"
        )
    mlps = _mlp_modules(model)
    stats: dict[int, dict[str, Any]] = {}

    def watcher(layer: int, side: str):
        def fn(x: torch.Tensor) -> None:
            v, flat = x.detach().float().abs().reshape(-1, x.shape[-1]).max(0).values.max(0)
            stats.setdefault(layer, {})[side] = (float(v), int(flat))

        return fn

    downs = [f"{name}.down_proj" for name, _ in mlps]
    ins, outs = ({d: watcher(i, side) for i, d in enumerate(downs)} for side in ("in", "out"))
    with hooked(model, ins, "input"), hooked(model, outs, "output"), torch.no_grad():
        body(model)(input_ids=torch.tensor([list(input_ids)], device=next(model.parameters()).device), use_cache=False)
    outs = torch.tensor([stats[i]["out"][0] for i in range(len(mlps))])
    median = float(outs.median())
    found = []
    for i in range(len(mlps)):
        (vin, col), (vout, row) = stats[i]["in"], stats[i]["out"]
        if vout > spike * max(median, 1e-12):
            found.append({"layer": i, "row": row, "col": col, "max_abs_input": vin, "max_abs_output": vout, "times_median": vout / max(median, 1e-12)})
    return sorted(found, key=lambda d: -d["max_abs_output"])[:top]


def shapes_of(pretrained: str | None, scope: str = DEFAULT_SCOPE) -> dict[str, tuple[int, ...]]:
    """In-scope parameter shapes of a model from its config alone (built on the meta device: no weights read)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from lm_eval_lingreg.errors import ModelLoadError

    if pretrained is None:
        from lm_eval_lingreg.bundled import prepare

        pretrained = str(prepare())
    try:
        config = AutoConfig.from_pretrained(pretrained)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception as e:  # noqa: BLE001 - transformers raises many types for a bad folder
        raise ModelLoadError(
            f"cannot read the model config of {pretrained!r} ({type(e).__name__}: {str(e)[:160]}); give --pretrained a model folder or hub id"
        ) from e
    return scope_shapes(model, scope)
