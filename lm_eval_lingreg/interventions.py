"""Apply perturbations to a loaded model, validated first and undone exactly.

`resolve` turns a `Perturbation` (see `perturbation`) into the entries it changes on this
model, without changing anything; `perturb` validates every perturbation, then changes the
weights in order and returns an `Applied` handle whose `restore()` puts back every changed
entry bit for bit (it is also a context manager).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lm_eval_lingreg.anatomy import base_model, editability_problems, layer_index, model_slots, named_parameters
from lm_eval_lingreg.capture import add_hook
from lm_eval_lingreg.edits import SavedEntries, flat_view, local_entries
from lm_eval_lingreg.errors import PerturbationError, close_matches
from lm_eval_lingreg.languages import CORE_LANGUAGES
from lm_eval_lingreg.perturbation import GROUPS, Perturbation, spec_dicts, spec_sha256, spec_string

__all__ = [
    "Target",
    "Steering",
    "Neurons",
    "text_decoder",
    "decoder_layers",
    "MEAN_CALIBRATION",
    "activation_means",
    "resolve",
    "Applied",
    "check_all",
    "perturb",
]


@dataclass
class Target:
    """Entries of one tensor to change, and the offset between stored value and effective gain."""

    name: str
    indices: torch.Tensor
    offset: float = 0.0


def _checked_region(value: Any, model: torch.nn.Module) -> Any:
    """A `mask=`/`neurons=` value (a Region, a file or a shipped mask's name) as a Region checked against the model."""
    from lm_eval_lingreg.region_io import load_region
    from lm_eval_lingreg.regions import Region, validate

    region = value if isinstance(value, Region) else load_region(value)
    validate(region, model)
    return region


def _check_value_fits(p: Perturbation, model: torch.nn.Module) -> None:
    """Refuse an operand of set/add/mul that the model's floating dtype cannot hold."""
    dtype = next(model.parameters()).dtype
    if p.op in ("set", "add", "mul") and dtype.is_floating_point and abs(p.value) > torch.finfo(dtype).max:
        raise PerturbationError(f"{p}: value {p.value:g} overflows the model's {dtype} (largest {torch.finfo(dtype).max:.4g}); use a smaller value")


def _region_targets(p: Perturbation, model: torch.nn.Module) -> list[Target]:
    region = _checked_region(p.mask, model)
    return [Target(n, idx) for n, idx in region.indices.items() if idx.numel()]


def _scalar_targets(p: Perturbation, params: Mapping[str, torch.Tensor]) -> list[Target]:
    if p.param not in params:
        raise PerturbationError(
            f"param={p.param}: no such parameter in this model{close_matches(p.param, params)}; "
            f"names look like {next(iter(params), '?')!r} (list them with `lingreg params`)"
        )
    shape = tuple(params[p.param].shape)
    if p.index is not None:
        numel = math.prod(shape)
        if p.index >= numel:
            raise PerturbationError(f"param={p.param}: index={p.index} out of range for shape {shape} (valid 0..{numel - 1})")
        flat = p.index
    else:
        if len(shape) != 2:
            raise PerturbationError(f"param={p.param}: row=/col= need a 2-D tensor, this one has shape {shape}; use index=")
        if p.row >= shape[0] or p.col >= shape[1]:
            raise PerturbationError(f"param={p.param}: row={p.row}, col={p.col} out of range for shape {shape}")
        flat = p.row * shape[1] + p.col
    return [Target(p.param, torch.tensor([flat], dtype=torch.int64))]


def _dimension_targets(p: Perturbation, model: torch.nn.Module) -> list[Target]:
    slots, hidden = model_slots(model)
    if not slots:
        raise PerturbationError("this model has no recognisable per-layer norms or q/k/v/o/gate/up/down projections")
    n_layers = max(s.layer for s in slots.values()) + 1
    layers = list(range(n_layers)) if p.layers is None else list(p.layers)
    bad_layers = [la for la in layers if la >= n_layers]
    if bad_layers:
        raise PerturbationError(f"layer {bad_layers[0]} out of range: this model has layers 0..{n_layers - 1}")
    bad_dims = [d for d in p.dims if d >= hidden]
    if bad_dims:
        raise PerturbationError(f"dim={bad_dims[0]} out of range: the hidden size is {hidden} (dims 0..{hidden - 1})")
    present = sorted({s.module for s in slots.values()})
    roles: set[str] = set()
    names: set[str] = set()
    for m in p.modules:
        if m in GROUPS:
            roles.update(GROUPS[m])
        elif m in present:
            names.add(m)
        else:
            raise PerturbationError(
                f"modules={m}: this model ({type(base_model(model)).__name__}) has no such module on the residual stream"
                f"{close_matches(m, present)}; available: {', '.join(present)}, or the groups {', '.join(GROUPS)}"
            )
    chosen = [s for s in slots.values() if s.layer in layers and (s.role in roles or s.module in names)]
    for m in sorted(names):
        missing = [la for la in layers if not any(s.module == m and s.layer == la for s in chosen)]
        if missing:
            raise PerturbationError(f"modules={m}: not present in layer {missing[0]} of this model")
    if not chosen:
        raise PerturbationError(f"no tensors selected by modules={'+'.join(p.modules)} in layers {layers}")
    return [Target(s.name, torch.unique(torch.cat([s.indices(d) for d in p.dims]))) for s in chosen]


def text_decoder(model: torch.nn.Module) -> torch.nn.Module:
    """The text decoder (a multimodal model's language model, not its vision tower), else the model."""
    base = base_model(model)
    try:
        decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    except (AttributeError, NotImplementedError):
        decoder = None
    return decoder if isinstance(decoder, torch.nn.Module) else base


def decoder_layers(model: torch.nn.Module) -> dict[int, torch.nn.Module]:
    """{layer index: decoder layer module}: the modules whose output is the residual stream after each layer."""
    out = {}
    for name, module in text_decoder(model).named_modules():
        index = layer_index(name)
        if index is not None and not isinstance(module, torch.nn.ModuleList):
            out.setdefault(index, module)
    return out


def _chosen_layers(
    model: torch.nn.Module, requested: Sequence[int] | None, default: list[int] | None, what: str, where: str
) -> tuple[dict[int, torch.nn.Module], list[int]]:
    """The model's decoder layers and the ones chosen (`requested`, else `default`, else all), each checked to exist."""
    layers = decoder_layers(model)
    if not layers:
        raise PerturbationError(f"{what}: this model has no recognisable decoder layers (layers.<n>)")
    chosen = list(requested) if requested is not None else default if default is not None else sorted(layers)
    bad = [la for la in chosen if la not in layers]
    if bad:
        raise PerturbationError(f"{where}layer {bad[0]} out of range: this model has layers 0..{max(layers)}")
    return layers, chosen


def _activation_layers(p: Perturbation, model: torch.nn.Module) -> dict[int, torch.nn.Module]:
    from lm_eval_lingreg.anatomy import hidden_size

    layers, chosen = _chosen_layers(model, p.layers, None, "on=activation", "")
    hidden = hidden_size(model)
    bad_dims = [d for d in p.dims if hidden is not None and d >= hidden]
    if bad_dims:
        raise PerturbationError(f"dim={bad_dims[0]} out of range: the hidden size is {hidden} (dims 0..{hidden - 1})")
    _check_value_fits(p, model)
    return {la: layers[la] for la in chosen}


#: Where `op=mean` measures a dimension's mean activation: eld sentences of the paper's six calibration languages.
MEAN_CALIBRATION = {"langs": tuple(CORE_LANGUAGES), "samples": 8, "source": "eld"}


def activation_means(model: torch.nn.Module, tokenizer: Any, layers: Mapping[int, torch.nn.Module], dims: Sequence[int]) -> dict[int, torch.Tensor]:
    """{layer: signed mean of the residual stream's `dims` after that layer} over every token of the calibration
    sentences (`MEAN_CALIBRATION`, with BOS), measured on the model as it is now (earlier perturbations included)."""
    from lm_eval_lingreg.capture import activation_pass
    from lm_eval_lingreg.corpora import make_samples

    samples = [s for lang in MEAN_CALIBRATION["langs"] for s in make_samples(tokenizer, lang, MEAN_CALIBRATION["samples"]).input_ids]
    names = {id(m): n for n, m in base_model(model).named_modules()}
    sums = {la: torch.zeros(len(dims), dtype=torch.float64) for la in layers}

    def collect_for(la: int):
        def collect(values: torch.Tensor, keep: torch.Tensor) -> None:
            sums[la] += values[keep][:, list(dims)].double().sum(0).cpu()

        return collect

    tokens = activation_pass(model, samples, {names[id(m)]: collect_for(la) for la, m in layers.items()}, "output", pad_id=tokenizer.pad_token_id or 0)
    return {la: s / tokens for la, s in sums.items()}


@dataclass
class Steering:
    """A steering perturbation checked against a model: its vectors (float32, on the chosen layers) and file."""

    layers: dict[int, torch.nn.Module]
    vectors: dict[int, torch.Tensor]
    path: str
    sha256: str
    metadata: dict[str, str]


def _steering(p: Perturbation, model: torch.nn.Module) -> Steering:
    """Load `p.vector` and check it against the model (hidden size, layers, finite in the model's dtype); changes nothing."""
    from lm_eval_lingreg.anatomy import hidden_size
    from lm_eval_lingreg.region_io import file_sha256
    from lm_eval_lingreg.steering import load_vectors

    vectors, metadata = load_vectors(p.vector)
    path = str(p.vector)
    size = next(iter(vectors.values())).numel()
    hidden = hidden_size(model)
    if hidden is not None and size != hidden:
        raise PerturbationError(f"{path}: the vectors have size {size} but this model's hidden size is {hidden} (made for another model?)")
    layers, chosen = _chosen_layers(model, p.layers, sorted(vectors), "vector=", f"{path}: ")
    missing = [la for la in chosen if la not in vectors]
    if missing:
        raise PerturbationError(f"{path}: has no vector for layer {missing[0]} (it has layers {', '.join(map(str, sorted(vectors)))})")
    dtype = next(model.parameters()).dtype
    if dtype.is_floating_point:
        top = max(float(vectors[la].abs().max()) for la in chosen) * abs(p.value)
        # the hook scales the vector after casting it to the activation's dtype: the value itself must fit too
        if not math.isfinite(top) or top > torch.finfo(dtype).max or abs(p.value) > torch.finfo(dtype).max:
            raise PerturbationError(f"{p}: value {p.value:g} times the vector overflows the model's {dtype}; use a smaller value")
    return Steering({la: layers[la] for la in chosen}, {la: vectors[la] for la in chosen}, path, file_sha256(p.vector), metadata)


@dataclass
class Neurons:
    """A neuron perturbation checked against a model: per layer, its FFN down projection (module and name) and
    the neurons (indices into that projection's input, the intermediate activation)."""

    modules: dict[int, torch.nn.Module]
    names: dict[int, str]
    indices: dict[int, torch.Tensor]

    @property
    def count(self) -> int:
        return sum(int(i.numel()) for i in self.indices.values())


def _neurons(p: Perturbation, model: torch.nn.Module) -> Neurons:
    """The neurons `p` addresses on this model (`neuron=` in each chosen layer, or the `down_proj` columns a
    `neurons=` region touches), each checked to exist; changes nothing."""
    from lm_eval_lingreg.errors import RegionError
    from lm_eval_lingreg.sources import down_projs

    params = named_parameters(model)
    shapes = {n: tuple(t.shape) for n, t in params.items()}
    try:
        downs = down_projs(shapes, experts=False)
    except RegionError as e:
        if down_projs(shapes):  # mixture-of-experts layers only: their experts share one fused module
            raise PerturbationError(
                f"{p}: this model's FFN layers are mixtures of experts, whose neurons live in one fused experts module; neuron= "
                "addresses dense FFN down projections: change expert neurons' weights with mask= (their down_proj columns) instead"
            ) from e
        raise PerturbationError(f"{p}: {e}; neuron= addresses the input of each layer's FFN down_proj") from e
    modules = dict(base_model(model).named_modules())
    layers = sorted(downs) if p.layers is None else list(p.layers)
    bad = [la for la in layers if la not in downs]
    if bad:
        raise PerturbationError(f"{p}: layer {bad[0]} out of range: this model's FFN down projections are in layers {min(downs)}..{max(downs)}")
    from lm_eval_lingreg.edits import is_dtensor

    if any(is_dtensor(params[downs[la]].data) for la in layers):
        raise PerturbationError(
            f"{p}: this model's FFN down projections are tensor-parallel (tp_plan), so each process sees only a slice of the "
            "neurons; neuron perturbations run on a model loaded without tp_plan (data parallel or one process)"
        )
    widths = {la: params[downs[la]].shape[-1] for la in layers}
    if p.neurons is not None:
        indices = _region_neurons(p, model, {la: downs[la] for la in layers}, widths)
    else:
        indices = {la: torch.tensor(p.neuron, dtype=torch.int64) for la in layers}
        over = next(((la, n) for la in layers for n in p.neuron if n >= widths[la]), None)
        if over is not None:
            la, n = over
            raise PerturbationError(f"neuron={n} out of range in layer {la}: its FFN has {widths[la]} neurons (0..{widths[la] - 1})")
    names = {la: downs[la].removesuffix(".weight") for la in indices}
    missing = [n for n in names.values() if n not in modules]
    if missing:
        raise PerturbationError(f"{p}: no module {missing[0]!r} in this model to hook")
    _check_value_fits(p, model)
    return Neurons({la: modules[n] for la, n in names.items()}, names, indices)


def _region_neurons(p: Perturbation, model: torch.nn.Module, downs: Mapping[int, str], widths: Mapping[int, int]) -> dict[int, torch.Tensor]:
    """{layer: the columns of its down_proj that the `neurons=` region holds an entry of} (layers without any left out)."""
    region = _checked_region(p.neurons, model)
    out = {}
    for la, down in downs.items():
        idx = region.indices.get(down)
        if idx is not None and idx.numel():
            out[la] = torch.unique(idx.long() % widths[la])
    if not out:
        raise PerturbationError(
            f"neurons={p.neurons_label}: the region holds no entry of a down_proj in the chosen layers, so it names no neuron; "
            "give a region of FFN neurons, such as `lingreg extract lape --lang zh` writes"
        )
    return out


def _entries_hook(p: Perturbation, layer: int, indices: torch.Tensor, values: torch.Tensor | None):
    """Change entries `indices` of the last dimension of the hooked activation (hidden dimensions of the residual
    stream, or neurons of the FFN's intermediate activation): to `values` when given (a measured mean or median),
    else by `p`'s operation; an activation driven to inf or NaN is an error."""
    placed: dict[tuple, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def hook(x: torch.Tensor) -> torch.Tensor:
        key = (x.dtype, x.device)
        if key not in placed:
            placed.clear()
            placed[key] = (indices.to(x.device), None if values is None else values.to(device=x.device, dtype=x.dtype))
        idx, fixed = placed[key]
        x = x.clone()
        new = fixed.expand_as(x[..., idx]) if fixed is not None else _operate(p, x[..., idx])
        if not bool(torch.isfinite(new).all()):
            raise PerturbationError(f"{p} overflows {x.dtype} at layer {layer} (the activation becomes inf or NaN); use a smaller value")
        x[..., idx] = new
        return x

    return hook


def _steering_hook(vector: torch.Tensor, alpha: float):
    """Add `alpha * vector` at every position: the vector cast to the activation's dtype and device, then scaled
    (the order lm-eval's `steered` model computes it in)."""
    cast: dict[tuple, torch.Tensor] = {}

    def hook(h: torch.Tensor) -> torch.Tensor:
        key = (h.dtype, h.device)
        if key not in cast:
            cast.clear()
            cast[key] = vector.to(device=h.device, dtype=h.dtype) * alpha
        out = h + cast[key]
        if not bool(torch.isfinite(out).all()) and bool(torch.isfinite(h).all()):
            raise PerturbationError(f"the steering vector times {alpha:g} overflows {h.dtype} in the residual stream; use a smaller value")
        return out

    return hook


def resolve(p: Perturbation, model: torch.nn.Module, params: Mapping[str, torch.Tensor] | None = None) -> list[Target]:
    """Check `p` against the model and return the entries it changes (none for `on=activation`); changes nothing."""
    from lm_eval_lingreg.anatomy import gain_offset

    params = params if params is not None else named_parameters(model)
    if p.kind == "steering":
        _steering(p, model)
        return []
    if p.kind == "neuron":
        _neurons(p, model)
        return []
    if p.on == "activation":
        _activation_layers(p, model)
        return []
    if p.kind == "scalar":
        targets = _scalar_targets(p, params)
    elif p.kind == "dimension":
        targets = _dimension_targets(p, model)
    else:
        targets = _region_targets(p, model)
    problems = editability_problems({t.name: params[t.name] for t in targets})
    if problems:
        raise PerturbationError(f"cannot perturb {p}: " + "; ".join(problems))
    if p.on == "gain":
        slots, _ = model_slots(model)
        modules = dict(base_model(model).named_modules())
        for t in targets:
            if t.name in slots and slots[t.name].role == "norm":
                t.offset = gain_offset(modules[t.name.removesuffix(".weight")], params[t.name])
    return targets


@dataclass
class Applied:
    """Perturbations applied to a model; `restore()` puts every changed entry back bit for bit."""

    model: torch.nn.Module
    perturbations: list[Perturbation]
    saved: SavedEntries = None  # type: ignore[assignment]
    summary: list[dict[str, Any]] = field(default_factory=list)
    hooks: list[Any] = field(default_factory=list)  # forward hooks of on=activation perturbations

    def __post_init__(self) -> None:
        if self.saved is None:
            self.saved = SavedEntries(self.model)

    @property
    def entries_changed(self) -> int:
        return sum(s["entries"] for s in self.summary)

    def restore(self) -> None:
        """Remove the hooks and put every changed entry back; refused (nothing changed) while a later perturbation
        of the same entries is still applied: restore that one first."""
        self.saved.check_restorable()
        while self.hooks:
            self.hooks.pop().remove()
        self.saved.restore()

    def __enter__(self) -> Applied:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def info(self) -> dict[str, Any]:
        """What goes into results JSON: the spec, its hash, and what it changed."""
        return {
            "perturbations": spec_dicts(self.perturbations),
            "perturbation_spec": spec_string(self.perturbations),
            "perturbation_sha256": spec_sha256(self.perturbations),
            "entries_changed": self.entries_changed,
            "perturbed": self.summary,
        }


def check_all(model: torch.nn.Module, perturbations: Sequence[Perturbation]) -> None:
    """Resolve every perturbation against the model (raising on the first that does not fit); change nothing."""
    params = named_parameters(model)
    for p in perturbations:
        resolve(p, model, params)


@torch.no_grad()
def perturb(model: torch.nn.Module, perturbations: Perturbation | Sequence[Perturbation], tokenizer: Any = None) -> Applied:
    """Apply perturbations in order. Every one is validated before any weight changes; `op=mean` (activations)
    needs the `tokenizer` to measure the mean on calibration text."""
    perts = [perturbations] if isinstance(perturbations, Perturbation) else list(perturbations)
    wrong = next((p for p in perts if not isinstance(p, Perturbation)), None)
    if wrong is not None:
        raise PerturbationError(f"perturb takes Perturbation values (from parse_spec or Perturbation.parse), got {type(wrong).__name__} {str(wrong)[:60]!r}")
    params = named_parameters(model)
    resolved = [(p, resolve(p, model, params)) for p in perts]
    if tokenizer is None and any(p.op in ("mean", "median") for p in perts):
        raise PerturbationError("op=mean and op=median measure an activation on calibration text and need the model's tokenizer (pass tokenizer= to perturb)")
    applied = Applied(model, perts)
    try:
        for p, targets in resolved:
            if p.kind == "steering":
                steering = _steering(p, model)
                applied.hooks += [add_hook(m, _steering_hook(steering.vectors[la], float(p.value)), "output") for la, m in steering.layers.items()]
                applied.summary.append(
                    {
                        "perturbation": str(p),
                        "entries": 0,
                        "activation_layers": sorted(steering.layers),
                        "vector_sha256": steering.sha256,
                        "vector_metadata": steering.metadata,
                    }
                )
                continue
            if p.kind == "neuron":
                applied.hooks += _apply_neurons(p, model, tokenizer, applied.summary)
                continue
            if p.on == "activation":
                layers = _activation_layers(p, model)
                means = activation_means(model, tokenizer, layers, p.dims) if p.op == "mean" else None
                dims = torch.tensor(p.dims, dtype=torch.int64)
                applied.hooks += [add_hook(m, _entries_hook(p, la, dims, None if means is None else means[la]), "output") for la, m in layers.items()]
                applied.summary.append({"perturbation": str(p), "entries": 0, "activation_layers": sorted(layers)})
                if means is not None:
                    cal = MEAN_CALIBRATION
                    applied.summary[-1]["means"] = {str(la): [float(v) for v in m] for la, m in sorted(means.items())}
                    applied.summary[-1]["mean_text"] = f"{cal['source']} sentences, {cal['samples']} per language of {','.join(cal['langs'])}"
                continue
            gen = torch.Generator().manual_seed(p.seed) if p.op == "noise" else None
            for t in targets:
                orig = applied.saved.save(t.name, params[t.name], t.indices)
                local = local_entries(params[t.name], t.indices)  # a tensor-parallel process changes its own shard's entries
                new = _new_values(p, orig, t.offset, _noise(p, t.indices.numel(), gen, local.positions))
                local.flat.index_copy_(0, local.indices.to(local.flat.device), new.to(local.flat.dtype))
            applied.summary.append(
                {
                    "perturbation": str(p),
                    "entries": sum(int(t.indices.numel()) for t in targets),
                    "tensors": [t.name for t in targets] if len(targets) <= 8 else f"{len(targets)} tensors",
                    **({"gain_offsets": sorted({t.offset for t in targets})} if p.on == "gain" else {}),
                }
            )
        bad = next((name for name, idx, _ in applied.saved if not torch.isfinite(flat_view(params[name])[idx.long().to(params[name].device)]).all()), None)
        if bad is not None:
            raise PerturbationError(f"the perturbation overflows {params[bad].dtype} in {bad} (model restored); use a smaller value")
    except BaseException:
        applied.restore()
        raise
    return applied


def _apply_neurons(p: Perturbation, model: torch.nn.Module, tokenizer: Any, summary: list[dict[str, Any]]) -> list[Any]:
    """Hook `p`'s neurons (measuring their mean or median first, on the model as it is now); returns the hooks."""
    from lm_eval_lingreg.steering import NEURON_SAMPLES, neuron_statistic

    neurons = _neurons(p, model)
    values = neuron_statistic(model, tokenizer, p.lang, neurons.names, neurons.indices, p.op) if p.op in ("mean", "median") else {}
    hooks = [add_hook(m, _entries_hook(p, la, neurons.indices[la], values.get(la)), "input") for la, m in neurons.modules.items()]
    summary.append({"perturbation": str(p), "entries": 0, "neurons": neurons.count, "activation_layers": sorted(neurons.modules)})
    if isinstance(p.neurons, str):
        from lm_eval_lingreg.region_io import file_sha256, resolve

        summary[-1]["neurons_sha256"] = file_sha256(resolve(p.neurons))
    if values:
        summary[-1][p.op] = {str(la): [float(v) for v in values[la]] for la in sorted(values)} if neurons.count <= 64 else "(per neuron; not listed)"
        summary[-1][f"{p.op}_text"] = f"eld sentences, {NEURON_SAMPLES} of {p.lang}, every token but BOS"
    return hooks


def _noise(p: Perturbation, n: int, gen: torch.Generator | None, positions: torch.Tensor | None) -> torch.Tensor | None:
    """`op=noise`'s standard normal draws for the `n` entries of a target, drawn for all of them so that a
    tensor-parallel process takes the same draws for its shard's entries (`positions`) as one process would."""
    if p.op != "noise":
        return None
    eps = torch.randn((n,), generator=gen)
    return eps if positions is None else eps[positions]


def _new_values(p: Perturbation, orig: torch.Tensor, offset: float, eps: torch.Tensor | None) -> torch.Tensor:
    g = orig.double().cpu() + offset  # effective gain (offset 0: the stored value); float64 so overflow shows as inf
    return (_operate(p, g, eps=eps) - offset).to(orig.device)


def _operate(p: Perturbation, x: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
    """`p`'s operation on values `x` (weights or activations); `op=noise` adds the standard normal draws `eps`."""
    if p.op == "zero":
        return torch.zeros_like(x)
    if p.op == "set":
        return torch.full_like(x, p.value)
    if p.op == "mul":
        return x * p.value
    if p.op == "add":
        return x + p.value
    return x + p.value * eps.to(x.dtype) * (x.abs() if p.scale == "relative" else 1.0)
