"""Perturbations: change chosen weights of a loaded model in place, validated first, undone exactly.

A `Perturbation` is a value object with three kinds of target, all named with the model's real
parameter names:

- **scalar**: one entry of one tensor, `param=model.layers.1.post_attention_layernorm.weight`
  with `index=2100` (1-D, or a flat index) or `row=...` and `col=...` (2-D);
- **dimension**: hidden dimension(s) `dim=2100` in layer(s) `layer=1` across the modules that
  read or write the residual stream: entries of the per-layer norm weights, rows of
  `o_proj`/`down_proj` and columns of `q/k/v/gate/up_proj` (select with `modules=`);
- **region**: the entries of a region mask, `mask=core.safetensors` (or a shipped mask name).

and five operations: `zero`, `set` (to `value`), `mul` (by `value`), `add` (`value`), and `noise`
(Gaussian, seeded: `value` is the standard deviation, relative to each entry's magnitude with
`scale=relative`, the default, or absolute with `scale=absolute`).

`on=param` (default) applies the operation to the stored parameter. `on=gain` applies it to the
effective gain of a norm instead: identical for Llama-style RMSNorm (`x * w`), but for
Gemma-style norms (`x * (1 + w)`) "multiply the gain by 4" writes `4 * (1 + w) - 1`. How each
norm uses its weight is probed on the loaded module, not guessed from its class name.

The compact text form, used inside lm-eval's comma-separated `--model_args` and by the CLI,
joins `key=value` pairs with `:` and several perturbations with `;`:

    layer=1:dim=2100:op=mul:value=4
    param=model.layers.1.post_attention_layernorm.weight:index=2100:op=mul:value=4
    mask=core:op=noise:value=0.1:seed=0;layer=1:dim=87:modules=norms:op=zero

Several dimensions, layers or modules are joined with `+` (`dim=87+639`, `modules=norms+o_proj`,
`layers=0+1`); `layers=0-3` is a range and `layers=all` every layer.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lm_eval_lingreg.regions import RegionError, named_parameters

OPS = ("zero", "set", "mul", "add", "noise")
ON = ("param", "gain")
SCALES = ("relative", "absolute")
#: Module groups accepted by `modules=` besides exact module names.
GROUPS = {
    "all": ("norm", "read", "write"),
    "norms": ("norm",),
    "readers": ("read",),
    "writers": ("write",),
}
#: Linear layers whose input is the residual stream (a hidden dimension is one of their columns).
READERS = frozenset({"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "qkv_proj", "gate_up_proj"})
#: Linear layers whose output is added to the residual stream (a hidden dimension is one of their rows).
WRITERS = frozenset({"o_proj", "down_proj"})
#: Per-head norms (Gemma-3, Qwen-3): they act on head_dim, not on the residual stream.
_HEAD_NORMS = frozenset({"q_norm", "k_norm"})
_KEYS = {"param", "index", "row", "col", "layer", "layers", "dim", "dims", "modules", "mask", "op", "value", "on", "scale", "seed"}
_SLOT_RE = re.compile(r"^(?:.*\.)?layers\.(\d+)\.(.+)\.(weight|bias)$")


class PerturbationError(RegionError):
    """A perturbation that is malformed, or that does not fit the model it is applied to."""


# the value object ------------------------------------------------------------------------


@dataclass(frozen=True)
class Perturbation:
    """One perturbation; build it with `parse`, `from_dict` or the constructor."""

    op: str
    value: float | None = None
    param: str | None = None
    index: int | None = None
    row: int | None = None
    col: int | None = None
    dims: tuple[int, ...] = ()
    layers: tuple[int, ...] | None = None  # None: every layer
    modules: tuple[str, ...] = ("all",)
    mask: str | None = None
    on: str = "param"
    scale: str = "relative"
    seed: int = 0

    def __post_init__(self) -> None:
        kinds = [k for k, given in (("scalar", self.param), ("dimension", self.dims), ("region", self.mask)) if given]
        if len(kinds) != 1:
            raise PerturbationError(
                f"a perturbation names exactly one target: `param=` (one entry), `dim=` (a hidden dimension) "
                f"or `mask=` (a region); got {' and '.join(kinds) if kinds else 'none'} in {self.describe()!r}"
            )
        if self.op not in OPS:
            raise PerturbationError(f"unknown op {self.op!r} in {self.describe()!r}; use one of {', '.join(OPS)}")
        if self.op == "zero":
            if self.value not in (None, 0, 0.0):
                raise PerturbationError(f"op=zero takes no value (got value={self.value}); use op=set to write a value")
        elif self.value is None:
            raise PerturbationError(f"op={self.op} needs `value=` (e.g. op=mul:value=4) in {self.describe()!r}")
        elif not math.isfinite(self.value):
            raise PerturbationError(f"value must be a finite number, got {self.value!r}")
        if self.op == "noise" and self.value is not None and self.value < 0:
            raise PerturbationError(f"op=noise: value is a standard deviation and must be >= 0, got {self.value}")
        if self.on not in ON:
            raise PerturbationError(f"on={self.on!r}: use on=param (the stored weight, default) or on=gain (a norm's effective gain)")
        if self.scale not in SCALES:
            raise PerturbationError(f"scale={self.scale!r}: use scale=relative (default) or scale=absolute")
        if self.kind == "scalar":
            if (self.index is None) == (self.row is None and self.col is None):
                raise PerturbationError(f"param={self.param}: give `index=` (flat or 1-D) or both `row=` and `col=` (2-D)")
            if self.index is None and (self.row is None or self.col is None):
                raise PerturbationError(f"param={self.param}: a 2-D entry needs both `row=` and `col=`")
            if any(v is not None and v < 0 for v in (self.index, self.row, self.col)):
                raise PerturbationError(f"param={self.param}: indices must be >= 0")
        elif any(v is not None for v in (self.index, self.row, self.col)):
            raise PerturbationError("`index=`, `row=` and `col=` go with `param=`; a dimension is chosen with `dim=`")
        if self.kind != "dimension" and (self.layers is not None or self.modules != ("all",)):
            raise PerturbationError("`layer=` and `modules=` go with `dim=` (a hidden dimension perturbation)")
        if any(d < 0 for d in self.dims) or any(la < 0 for la in self.layers or ()):
            raise PerturbationError("dimensions and layers are numbered from 0")

    @property
    def kind(self) -> str:
        return "scalar" if self.param else "dimension" if self.dims else "region"

    # serialisation -----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Canonical dict: only the keys that matter for this kind, defaults included."""
        d: dict[str, Any] = {}
        if self.kind == "scalar":
            d["param"] = self.param
            if self.index is not None:
                d["index"] = self.index
            else:
                d["row"], d["col"] = self.row, self.col
        elif self.kind == "dimension":
            d["layers"] = "all" if self.layers is None else list(self.layers)
            d["dims"] = list(self.dims)
            d["modules"] = list(self.modules)
        else:
            d["mask"] = self.mask
        d["op"] = self.op
        if self.op != "zero":
            d["value"] = self.value
        d["on"] = self.on
        if self.op == "noise":
            d["scale"], d["seed"] = self.scale, self.seed
        return d

    def __str__(self) -> str:
        """The compact `key=value:key=value` form; `parse(str(p)) == p`."""
        parts = []
        for k, v in self.to_dict().items():
            if (k, v) in (("on", "param"), ("modules", ["all"])) or v is None:
                continue
            if isinstance(v, list):
                v = "+".join(str(x) for x in v)
            elif isinstance(v, float):
                v = repr(v).removesuffix(".0") if v.is_integer() and abs(v) < 1e15 else repr(v)
            parts.append(f"{k}={v}")
        return ":".join(parts)

    def describe(self) -> str:
        """The given fields, for error messages (works before validation finished)."""
        return ":".join(f"{k}={v}" for k, v in vars(self).items() if v not in (None, (), ("all",)) and (k, v) not in (("on", "param"), ("scale", "relative"), ("seed", 0)))

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> Perturbation:
        """From a mapping (a spec file entry, or lm-eval model_args already split into keys)."""
        unknown = sorted(set(spec) - _KEYS)
        if unknown:
            hint = difflib.get_close_matches(unknown[0], sorted(_KEYS), n=1)
            raise PerturbationError(
                f"unknown perturbation key(s) {', '.join(map(repr, unknown))}"
                + (f" (did you mean {hint[0]!r}?)" if hint else "")
                + f"; keys are {', '.join(sorted(_KEYS))}"
            )
        if "layer" in spec and "layers" in spec or "dim" in spec and "dims" in spec:
            raise PerturbationError("give `layer=` or `layers=` (and `dim=` or `dims=`), not both")
        op = spec.get("op")
        if op is None:
            if spec.get("mask") is None:
                raise PerturbationError(f"missing `op=` ({', '.join(OPS)}) in {dict(spec)}")
            op = "zero"  # a bare mask is an ablation
        layers = spec.get("layers", spec.get("layer"))
        dims = spec.get("dims", spec.get("dim"))
        modules = spec.get("modules")
        return cls(
            op=str(op).strip().lower(),
            value=_float(spec.get("value"), "value"),
            param=_str(spec.get("param")),
            index=_int(spec.get("index"), "index"),
            row=_int(spec.get("row"), "row"),
            col=_int(spec.get("col"), "col"),
            dims=tuple(_int_list(dims, "dim")) if dims is not None else (),
            layers=_layers(layers),
            modules=tuple(_str_list(modules)) if modules is not None else ("all",),
            mask=_str(spec.get("mask")),
            on=str(spec.get("on", "param")).strip().lower(),
            scale=str(spec.get("scale", "relative")).strip().lower(),
            seed=_int(spec.get("seed", 0), "seed"),
        )

    @classmethod
    def parse(cls, text: str) -> Perturbation:
        """From the compact form `key=value:key=value` (one perturbation)."""
        return cls.from_dict(_pairs(text))


def _pairs(text: str) -> dict[str, str]:
    text = text.strip()
    if not text:
        raise PerturbationError("empty perturbation; expected e.g. layer=1:dim=2100:op=mul:value=4")
    out: dict[str, str] = {}
    for part in text.split(":"):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not key or not value.strip():
            raise PerturbationError(
                f"malformed perturbation {text!r}: {part!r} is not key=value "
                "(pairs are joined with ':' and several perturbations with ';', "
                "e.g. layer=1:dim=2100:op=mul:value=4)"
            )
        if key in out:
            raise PerturbationError(f"key {key!r} given twice in {text!r}")
        if "=" in value or (key != "mask" and re.search(r"\s", value.strip())):
            raise PerturbationError(f"malformed perturbation {text!r}: {part!r} holds more than one value; join key=value pairs with ':'")
        out[key] = value.strip()
    return out


def _str(v: Any) -> str | None:
    return None if v is None else str(v).strip() or None


def _float(v: Any, key: str) -> float | None:
    if v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        raise PerturbationError(f"{key}={v!r} is not a number") from None


def _int(v: Any, key: str) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
        raise PerturbationError(f"{key}={v!r} is not a whole number")
    try:
        return int(str(v).strip()) if not isinstance(v, (int, float)) else int(v)
    except ValueError:
        raise PerturbationError(f"{key}={v!r} is not a whole number") from None


def _str_list(v: Any) -> list[str]:
    items = v if isinstance(v, (list, tuple)) else str(v).split("+")
    out = [str(x).strip() for x in items if str(x).strip()]
    if not out:
        raise PerturbationError("`modules=` is empty")
    return out


def _int_list(v: Any, key: str) -> list[int]:
    if isinstance(v, (list, tuple)):
        items: Iterable[Any] = v
    elif isinstance(v, str):
        items = [x for x in v.split("+") if x.strip()]
    else:
        items = [v]
    out: list[int] = []
    for x in items:
        if isinstance(x, str) and re.fullmatch(r"\s*\d+\s*-\s*\d+\s*", x):
            a, b = (int(y) for y in x.split("-"))
            if b < a:
                raise PerturbationError(f"{key}={x!r}: empty range")
            out.extend(range(a, b + 1))
        else:
            out.append(_int(x, key))
    if not out:
        raise PerturbationError(f"`{key}=` is empty")
    return sorted(set(out))


def _layers(v: Any) -> tuple[int, ...] | None:
    if v is None or (isinstance(v, str) and v.strip().lower() == "all"):
        return None
    return tuple(_int_list(v, "layer"))


# several perturbations -------------------------------------------------------------------


def parse_spec(spec: str | os.PathLike | Sequence[Any] | Mapping[str, Any]) -> list[Perturbation]:
    """Perturbations from a spec file (YAML/JSON), a compact string, a dict or a list of those.

    A spec file holds a list, or a mapping with a `perturbations:` list; each item is a mapping
    (`{layer: 1, dim: 2100, op: mul, value: 4}`) or a compact string.
    """
    if isinstance(spec, Mapping):
        if "perturbations" in spec:
            return parse_spec(spec["perturbations"])
        return [Perturbation.from_dict(spec)]
    if isinstance(spec, (list, tuple)):
        out = []
        for item in spec:
            out.extend(parse_spec(item))
        if not out:
            raise PerturbationError("the perturbation list is empty")
        return out
    text = str(spec).strip()
    path = Path(text).expanduser()
    if re.search(r"\.(ya?ml|json)$", text, re.IGNORECASE) or (not re.search(r"[=;]", text) and text):
        if not path.is_file():
            raise PerturbationError(f"perturbation spec file {text!r} not found (or write it inline: layer=1:dim=2100:op=mul:value=4)")
        import yaml

        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is YAML too
        except yaml.YAMLError as e:
            raise PerturbationError(f"{path}: not valid YAML/JSON: {e}") from None
        if data is None:
            raise PerturbationError(f"{path} is empty; expected a list of perturbations")
        if not isinstance(data, (list, Mapping, str)):
            raise PerturbationError(f"{path}: expected a list of perturbations, got {type(data).__name__}")
        try:
            return parse_spec(data)
        except PerturbationError as e:
            raise PerturbationError(f"{path}: {e}") from None
    return [Perturbation.parse(part) for part in text.split(";") if part.strip()] or parse_spec([])


def spec_dicts(perturbations: Sequence[Perturbation]) -> list[dict[str, Any]]:
    return [p.to_dict() for p in perturbations]


def spec_sha256(perturbations: Sequence[Perturbation]) -> str:
    """A stable hash of what is perturbed (canonical JSON of the perturbations, in order)."""
    blob = json.dumps(spec_dicts(perturbations), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def spec_string(perturbations: Sequence[Perturbation]) -> str:
    return ";".join(str(p) for p in perturbations)


# the residual stream of a model ----------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    """A tensor touching the residual stream: where hidden dimension d sits in it."""

    name: str
    layer: int
    module: str  # short module name, e.g. "down_proj", "input_layernorm"
    role: str  # "norm" (entry d), "read" (column d), "write" (row d or bias entry d)
    shape: tuple[int, ...]

    def indices(self, dim: int) -> torch.Tensor:
        """Flat indices of dimension `dim` in this tensor."""
        if len(self.shape) == 1:
            return torch.tensor([dim], dtype=torch.int64)
        rows, cols = self.shape
        if self.role == "read":
            return torch.arange(rows, dtype=torch.int64) * cols + dim
        return torch.arange(cols, dtype=torch.int64) + dim * cols

    def counts(self, flat: torch.Tensor, hidden: int) -> torch.Tensor:
        """How many of the flat indices fall on each hidden dimension."""
        if len(self.shape) == 1:
            return torch.bincount(flat, minlength=hidden)
        cols = self.shape[1]
        return torch.bincount(flat % cols if self.role == "read" else flat // cols, minlength=hidden)


def residual_slots(shapes: Mapping[str, Sequence[int]], hidden: int | None = None) -> tuple[dict[str, Slot], int]:
    """The tensors that read or write the residual stream, by name, and the hidden size.

    Works from names and shapes alone (so also for a region file): per-layer norm weights of
    the hidden size, the columns of q/k/v/gate/up projections and the rows (and bias) of o/down.
    """
    if hidden is None:
        sizes = [
            s[0] for n, s in shapes.items()
            if (m := _SLOT_RE.search(n)) and len(s) == 1 and _is_norm(m.group(2)) and m.group(3) == "weight"
        ]
        if not sizes:
            sizes = [s[0] for n, s in shapes.items() if (m := _SLOT_RE.search(n)) and len(s) == 2 and _short(m.group(2)) in WRITERS]
        if not sizes:
            raise PerturbationError("cannot tell the hidden size: no per-layer norm or o_proj/down_proj tensors found")
        hidden = max(set(sizes), key=sizes.count)
    slots = {}
    for name, shape in shapes.items():
        m = _SLOT_RE.search(name)
        if not m:
            continue
        layer, module, kind = int(m.group(1)), m.group(2), m.group(3)
        short, shape = _short(module), tuple(int(x) for x in shape)
        if len(shape) == 1 and kind == "weight" and _is_norm(module) and shape[0] == hidden:
            slots[name] = Slot(name, layer, short, "norm", shape)
        elif kind == "weight" and len(shape) == 2 and short in READERS and shape[1] == hidden:
            slots[name] = Slot(name, layer, short, "read", shape)
        elif short in WRITERS and shape[0] == hidden and (kind, len(shape)) in (("weight", 2), ("bias", 1)):
            slots[name] = Slot(name, layer, short, "write", shape)
    return slots, hidden


def _short(module: str) -> str:
    return module.rsplit(".", 1)[-1]


def _is_norm(module: str) -> bool:
    short = _short(module)
    return short not in _HEAD_NORMS and ("norm" in short or short.startswith("ln"))


def hidden_size(model: torch.nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    if cfg is None:
        return None
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return getattr(text, "hidden_size", None)


# resolving against a model ---------------------------------------------------------------


@dataclass
class Target:
    """Entries of one tensor to change, and the offset between stored value and effective gain."""

    name: str
    indices: torch.Tensor
    offset: float = 0.0


@torch.no_grad()
def gain_offset(module: torch.nn.Module, weight: torch.Tensor) -> float:
    """0.0 if the norm computes `normalized * w`, 1.0 if `normalized * (1 + w)` (Gemma-style).

    Probed on the module itself with a zero-mean input, so LayerNorm, RMSNorm and their
    variants are told apart by what they compute rather than by their class name.
    """
    n = weight.numel()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, n, generator=g)
    x = (x - x.mean(-1, keepdim=True)) * 10
    r = x / x.pow(2).mean(-1, keepdim=True).sqrt()
    try:
        y = module(x.to(weight.device, weight.dtype)).float().cpu()
    except Exception as e:  # noqa: BLE001
        raise PerturbationError(f"on=gain: cannot probe {type(module).__name__} ({e})") from None
    w = weight.detach().float().cpu()
    bias = getattr(module, "bias", None)
    b = bias.detach().float().cpu() if isinstance(bias, torch.Tensor) else 0.0
    err = {off: float((y - (r * (w + off) + b)).abs().max()) for off in (0.0, 1.0)}
    best = min(err, key=err.get)
    tol = 1e-2 * float(y.abs().max()) + 1e-3
    if err[best] > tol:
        raise PerturbationError(
            f"on=gain: {type(module).__name__} computes neither normalized*w nor normalized*(1+w); "
            "use on=param to perturb its stored weight"
        )
    return best


def _close(name: str, names: Iterable[str]) -> str:
    hint = difflib.get_close_matches(name, list(names), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(map(repr, hint))}?)" if hint else ""


def resolve(p: Perturbation, model: torch.nn.Module, params: Mapping[str, torch.Tensor] | None = None) -> list[Target]:
    """Check `p` against the model and return the entries it changes; changes nothing."""
    params = params if params is not None else named_parameters(model)
    if p.kind == "scalar":
        if p.param not in params:
            raise PerturbationError(
                f"param={p.param}: no such parameter in this model{_close(p.param, params)}; "
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
        targets = [Target(p.param, torch.tensor([flat], dtype=torch.int64))]
    elif p.kind == "dimension":
        targets = _resolve_dimension(p, model, params)
    else:
        from lm_eval_lingreg.region_io import load_region
        from lm_eval_lingreg.regions import validate

        region = load_region(p.mask)
        validate(region, model)
        targets = [Target(n, idx) for n, idx in region.indices.items() if idx.numel()]
    _check_editable(targets, params)
    if p.on == "gain":
        slots, _ = residual_slots({n: tuple(t.shape) for n, t in params.items()}, hidden_size(model))
        modules = dict(_base(model).named_modules())
        for t in targets:
            if t.name in slots and slots[t.name].role == "norm":
                t.offset = gain_offset(modules[t.name.removesuffix(".weight")], params[t.name])
    return targets


def _base(model: torch.nn.Module) -> torch.nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _resolve_dimension(p: Perturbation, model: torch.nn.Module, params: Mapping[str, torch.Tensor]) -> list[Target]:
    slots, hidden = residual_slots({n: tuple(t.shape) for n, t in params.items()}, hidden_size(model))
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
                f"modules={m}: this model ({type(_base(model)).__name__}) has no such module on the residual stream"
                f"{_close(m, present)}; available: {', '.join(present)}, or the groups {', '.join(GROUPS)}"
            )
    chosen = [s for s in slots.values() if s.layer in layers and (s.role in roles or s.module in names)]
    for m in sorted(names):
        missing = [la for la in layers if not any(s.module == m and s.layer == la for s in chosen)]
        if missing:
            raise PerturbationError(f"modules={m}: not present in layer {missing[0]} of this model")
    if not chosen:
        raise PerturbationError(f"no tensors selected by modules={'+'.join(p.modules)} in layers {layers}")
    return [Target(s.name, torch.unique(torch.cat([s.indices(d) for d in p.dims]))) for s in chosen]


def _check_editable(targets: Sequence[Target], params: Mapping[str, torch.Tensor]) -> None:
    for t in targets:
        p = params[t.name]
        if p.device.type == "meta":
            raise PerturbationError(f"{t.name} is offloaded (meta device); load the model fully to perturb it")
        if not (p.is_floating_point() and p.is_contiguous()):
            raise PerturbationError(f"{t.name} ({p.dtype}) is quantized or non-contiguous; load the model in a float dtype")


# applying ------------------------------------------------------------------------------------


@dataclass
class Applied:
    """Perturbations applied to a model; `restore()` puts every changed entry back bit for bit."""

    model: torch.nn.Module
    perturbations: list[Perturbation]
    saved: list[tuple[str, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    summary: list[dict[str, Any]] = field(default_factory=list)

    @property
    def entries_changed(self) -> int:
        return sum(s["entries"] for s in self.summary)

    @torch.no_grad()
    def restore(self) -> None:
        params = named_parameters(self.model)
        for name, idx, orig in reversed(self.saved):  # reverse order: overlapping targets end exact
            flat = params[name].data.view(-1)
            flat.index_copy_(0, idx.to(flat.device), orig.to(flat.device))
        self.saved.clear()

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


@torch.no_grad()
def perturb(model: torch.nn.Module, perturbations: Perturbation | Sequence[Perturbation]) -> Applied:
    """Apply perturbations in order. Every one is validated before any weight changes."""
    perts = [perturbations] if isinstance(perturbations, Perturbation) else list(perturbations)
    params = named_parameters(model)
    resolved = [(p, resolve(p, model, params)) for p in perts]
    applied = Applied(model, perts)
    try:
        for p, targets in resolved:
            gen = torch.Generator().manual_seed(p.seed) if p.op == "noise" else None
            for t in targets:
                flat = params[t.name].data.view(-1)
                idx = t.indices.to(flat.device)
                orig = flat[idx].clone()
                applied.saved.append((t.name, t.indices, orig))
                flat.index_copy_(0, idx, _new_values(p, orig, t.offset, gen).to(flat.dtype))
            applied.summary.append({
                "perturbation": str(p),
                "entries": sum(int(t.indices.numel()) for t in targets),
                "tensors": [t.name for t in targets] if len(targets) <= 8 else f"{len(targets)} tensors",
                **({"gain_offsets": sorted({t.offset for t in targets})} if p.on == "gain" else {}),
            })
    except BaseException:
        applied.restore()
        raise
    bad = [name for name, idx, _ in applied.saved if not torch.isfinite(params[name].data.view(-1)[idx.to(params[name].device)]).all()]
    if bad:
        applied.restore()
        raise PerturbationError(f"the perturbation overflows {params[bad[0]].dtype} in {bad[0]} (model restored); use a smaller value")
    return applied


def _new_values(p: Perturbation, orig: torch.Tensor, offset: float, gen: torch.Generator | None) -> torch.Tensor:
    g = orig.double().cpu() + offset  # effective gain (offset 0: the stored value); float64 so overflow shows as inf
    if p.op == "zero":
        g = torch.zeros_like(g)
    elif p.op == "set":
        g = torch.full_like(g, p.value)
    elif p.op == "mul":
        g = g * p.value
    elif p.op == "add":
        g = g + p.value
    else:
        eps = torch.randn(g.shape, generator=gen).double()
        g = g + p.value * eps * (g.abs() if p.scale == "relative" else 1.0)
    return (g - offset).to(orig.device)
