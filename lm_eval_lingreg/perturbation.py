"""Perturbations: change chosen weights of a loaded model in place, validated first, undone exactly.

A `Perturbation` is a value object with four kinds of target, the first three named with the
model's real parameter names:

- **scalar**: one entry of one tensor, `param=model.layers.1.post_attention_layernorm.weight`
  with `index=2100` (1-D, or a flat index) or `row=...` and `col=...` (2-D);
- **dimension**: hidden dimension(s) `dim=2100` in layer(s) `layer=1` across the modules that
  read or write the residual stream: entries of the per-layer norm weights, rows of
  `o_proj`/`down_proj` and columns of `q/k/v/gate/up_proj` (select with `modules=`);
- **region**: the entries of a region mask, `mask=core.safetensors` (or a shipped mask name);
- **steering**: a residual steering vector per layer, `vector=en-fr.safetensors` (written by
  `lingreg steer-vector`, see `steering`), added `value` times to the residual stream after each
  layer of the file (or of `layers=`), with `op=add` and `on=activation` (both the default here);
- **neuron**: MLP neurons addressed as LAPE addresses them, a layer and an index into the FFN's
  intermediate activation (the input of `down_proj`): `neuron=17+42:layer=3`, or every neuron whose
  `down_proj` column a region touches, `neurons=lape-zh.safetensors` (as `lingreg extract lape`
  writes it). Their activation is changed, `on=activation` (the only choice here), through hooks.

and five operations: `zero`, `set` (to `value`), `mul` (by `value`), `add` (`value`), and `noise`
(Gaussian, seeded: `value` is the standard deviation, relative to each entry's magnitude with
`scale=relative`, the default, or absolute with `scale=absolute`); activations also take `mean`,
and neurons `mean` and `median` on a chosen language's calibration text (`lang=zh`, required).
Zeroing or multiplying a neuron's activation is the same as zeroing or multiplying its `down_proj`
column (a weight edit: `mask=` with that column's region); the other neuron operations are not.

`on=param` (default) applies the operation to the stored parameter. `on=gain` applies it to the
effective gain of a norm instead: identical for Llama-style RMSNorm (`x * w`), but for
Gemma-style norms (`x * (1 + w)`) "multiply the gain by 4" writes `4 * (1 + w) - 1`. How each
norm uses its weight is probed on the loaded module, not guessed from its class name.

`on=activation` changes no weight: with `dim=` (and `layer=`), it sets the hidden dimension's
activation on the residual stream, the output of each chosen decoder layer, to zero, a value, a
multiple, a shifted value or its mean (`op=mean`: the signed mean over every position of
calibration text, measured on the model when the perturbation is applied) at every position (the
massive-activations experiment), through forward hooks that `restore()` removes.

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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lm_eval_lingreg.errors import PerturbationError

__all__ = ["OPS", "ON", "SCALES", "GROUPS", "KEYS", "Perturbation", "MAX_INT", "MAX_RANGE", "parse_spec", "spec_dicts", "spec_sha256", "spec_string"]

if TYPE_CHECKING:
    from lm_eval_lingreg.regions import Region

OPS = ("zero", "set", "mul", "add", "noise", "mean", "median")
ON = ("param", "gain", "activation")
SCALES = ("relative", "absolute")
#: Module groups accepted by `modules=` besides exact module names.
GROUPS = {
    "all": ("norm", "read", "write"),
    "norms": ("norm",),
    "readers": ("read",),
    "writers": ("write",),
}
#: Every key a perturbation may have (in a spec file, the compact form, or lm-eval model_args).
KEYS = frozenset(
    {
        "param",
        "index",
        "row",
        "col",
        "layer",
        "layers",
        "dim",
        "dims",
        "modules",
        "mask",
        "vector",
        "neuron",
        "neurons",
        "lang",
        "op",
        "value",
        "on",
        "scale",
        "seed",
    }
)


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
    mask: str | Region | None = None  # a region file, a shipped mask name, or a Region value
    vector: str | None = None  # a steering-vector file (.safetensors)
    neurons: str | Region | None = None  # a region whose down_proj columns are the neurons
    neuron: tuple[int, ...] = ()  # neuron indices, in every layer of `layers`
    lang: str | None = None  # the calibration language of op=mean/median on neurons
    on: str = "param"
    scale: str = "relative"
    seed: int = 0

    def __post_init__(self) -> None:
        self._check_target()
        self._check_op()
        self._check_on()
        self._check_entries()

    def _check_target(self) -> None:
        """Exactly one target; a steering vector goes with on=activation and op=add."""
        kinds = [
            k
            for k, given in (
                ("scalar", self.param),
                ("dimension", self.dims),
                ("region", self.mask is not None),
                ("steering", self.vector is not None),
                ("neurons", self.neurons is not None),
                ("neuron", self.neuron),
            )
            if given
        ]
        if len(kinds) != 1:
            raise PerturbationError(
                f"a perturbation names exactly one target: `param=` (one entry), `dim=` (a hidden dimension), "
                f"`mask=` (a region), `vector=` (a steering vector) or `neuron=`/`neurons=` (MLP neurons); got {' and '.join(kinds) if kinds else 'none'} in {self.describe()!r}"
            )
        if self.vector is not None and self.on == "param":
            object.__setattr__(self, "on", "activation")  # a steering vector acts on activations only
        if self.vector is not None:
            if self.on != "activation":
                raise PerturbationError(f"vector= adds a steering vector to the residual stream: it goes with on=activation, not on={self.on}")
            if self.op != "add":
                raise PerturbationError(f"vector= takes op=add (value = how many times the vector is added), not op={self.op}")
        if self.kind == "neuron":
            if self.op == "noise":
                raise PerturbationError("neurons take op=zero, set, mul, add, mean or median (on their activation), not op=noise")
            if self.on == "param":
                object.__setattr__(self, "on", "activation")  # neurons are changed through their activation
            if self.on != "activation":
                raise PerturbationError(
                    f"neuron=/neurons= change a neuron's activation (on=activation), not on={self.on}; to edit the weights, "
                    "use mask= with the neurons' down_proj columns"
                )

    def _check_op(self) -> None:
        """A known op, with a value exactly where it takes one."""
        if self.op not in OPS:
            raise PerturbationError(f"unknown op {self.op!r} in {self.describe()!r}; use one of {', '.join(OPS)}")
        if self.op in ("zero", "mean", "median"):
            no_value = self.value in (None, 0, 0.0) if self.op == "zero" else self.value is None  # op=zero also accepts value=0
            if not no_value:
                raise PerturbationError(f"op={self.op} takes no value (got value={self.value}); use op=set to write a value")
            if self.op == "mean" and self.on != "activation":
                raise PerturbationError("op=mean sets an activation to its mean on calibration text: it goes with on=activation and dim=, or with neurons")
            if self.op == "median" and self.kind != "neuron":
                raise PerturbationError("op=median sets neurons to their median activation on calibration text: it goes with neuron= or neurons= (and lang=)")
        elif self.value is None:
            raise PerturbationError(f"op={self.op} needs `value=` (e.g. op=mul:value=4) in {self.describe()!r}")
        elif not math.isfinite(self.value):
            raise PerturbationError(f"value must be a finite number, got {self.value!r}")
        if self.op == "noise" and self.value is not None and self.value < 0:
            raise PerturbationError(f"op=noise: value is a standard deviation and must be >= 0, got {self.value}")
        if self.kind == "neuron" and self.op in ("mean", "median") and self.lang is None:
            raise PerturbationError(f"op={self.op} on neurons measures the activation on one language's calibration text: add lang=<code> (e.g. lang=zh)")
        if self.lang is not None and not (self.kind == "neuron" and self.op in ("mean", "median")):
            raise PerturbationError("lang= names the calibration language of op=mean or op=median on neurons; it does not apply here")

    def _check_on(self) -> None:
        """What the op acts on (weight, gain or activation), and the scale."""
        if self.on not in ON:
            raise PerturbationError(
                f"on={self.on!r}: use on=param (the stored weight, default), on=gain (a norm's effective gain) or on=activation (a residual-stream activation)"
            )
        if self.on == "activation" and self.kind not in ("steering", "neuron"):
            if self.kind != "dimension":
                raise PerturbationError(
                    f"on=activation changes a hidden dimension's or a neuron's activation: give `dim=` (and `layer=`) or `neuron=`, not {self.kind} targets"
                )
            if self.modules != ("all",):
                raise PerturbationError("on=activation acts on the residual stream after each chosen layer; `modules=` picks weights and does not apply")
            if self.op == "noise":
                raise PerturbationError("on=activation takes op=zero, set, mul, add or mean")
        if self.scale not in SCALES:
            raise PerturbationError(f"scale={self.scale!r}: use scale=relative (default) or scale=absolute")

    def _check_entries(self) -> None:
        """Entry indices, layers, modules, dimensions and seed for the target's kind."""
        if self.kind == "scalar":
            if (self.index is None) == (self.row is None and self.col is None):
                raise PerturbationError(f"param={self.param}: give `index=` (flat or 1-D) or both `row=` and `col=` (2-D)")
            if self.index is None and (self.row is None or self.col is None):
                raise PerturbationError(f"param={self.param}: a 2-D entry needs both `row=` and `col=`")
            if any(v is not None and v < 0 for v in (self.index, self.row, self.col)):
                raise PerturbationError(f"param={self.param}: indices must be >= 0")
        elif any(v is not None for v in (self.index, self.row, self.col)):
            raise PerturbationError("`index=`, `row=` and `col=` go with `param=`; a dimension is chosen with `dim=`")
        if self.kind in ("steering", "neuron") and self.modules != ("all",):
            raise PerturbationError(f"{'vector=' if self.kind == 'steering' else 'neuron='} acts on activations; `modules=` picks weights and does not apply")
        if self.kind not in ("dimension", "steering", "neuron") and (self.layers is not None or self.modules != ("all",)):
            raise PerturbationError("`layer=` and `modules=` go with `dim=` (a hidden dimension), `vector=` (a steering vector) or `neuron=` (MLP neurons)")
        if any(d < 0 for d in self.dims) or any(la < 0 for la in self.layers or ()) or any(n < 0 for n in self.neuron):
            raise PerturbationError("dimensions, neurons and layers are numbered from 0")
        if not 0 <= self.seed <= MAX_INT:
            raise PerturbationError(f"seed={self.seed} must be a whole number from 0 to {MAX_INT:.3g}")

    @property
    def kind(self) -> str:
        if self.neurons is not None or self.neuron:
            return "neuron"
        return "scalar" if self.param else "dimension" if self.dims else "steering" if self.vector is not None else "region"

    @property
    def mask_label(self) -> str | None:
        """The mask as recorded: its path or name, or for a Region value its name and a content digest."""
        if self.mask is None or isinstance(self.mask, str):
            return self.mask
        return _region_label(self.mask)

    @property
    def neurons_label(self) -> str | None:
        """The neurons' region as recorded (like `mask_label`)."""
        return self.neurons if self.neurons is None or isinstance(self.neurons, str) else _region_label(self.neurons)

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
        elif self.kind == "steering":
            d["vector"] = self.vector
            d["layers"] = "all" if self.layers is None else list(self.layers)
        elif self.kind == "neuron":
            if self.neurons is not None:
                d["neurons"] = self.neurons_label
            else:
                d["neuron"] = list(self.neuron)
            d["layers"] = "all" if self.layers is None else list(self.layers)
            if self.lang is not None:
                d["lang"] = self.lang
        else:
            d["mask"] = self.mask_label
        d["op"] = self.op
        if self.op not in ("zero", "mean", "median"):
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
        fields = {**vars(self), "mask": self.mask_label, "neurons": self.neurons_label}
        return ":".join(
            f"{k}={v}" for k, v in fields.items() if v not in (None, (), ("all",)) and (k, v) not in (("on", "param"), ("scale", "relative"), ("seed", 0))
        )

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> Perturbation:
        """From a mapping (a spec file entry, or lm-eval model_args already split into keys)."""
        bad = [k for k in spec if not isinstance(k, str)]
        if bad:
            raise PerturbationError(f"perturbation keys are names like layer, dim, op; got {bad[0]!r}")
        unknown = sorted(set(spec) - KEYS)
        if unknown:
            hint = difflib.get_close_matches(unknown[0], sorted(KEYS), n=1)
            raise PerturbationError(
                f"unknown perturbation key(s) {', '.join(map(repr, unknown))}"
                + (f" (did you mean {hint[0]!r}?)" if hint else "")
                + f"; keys are {', '.join(sorted(KEYS))}"
            )
        if "layer" in spec and "layers" in spec or "dim" in spec and "dims" in spec:
            raise PerturbationError("give `layer=` or `layers=` (and `dim=` or `dims=`), not both")
        neuron_kind = spec.get("neurons") is not None or spec.get("neuron") is not None
        if neuron_kind and str(spec.get("on", "activation")).strip().lower() != "activation":
            raise PerturbationError(
                f"neuron=/neurons= change a neuron's activation (on=activation), not on={spec['on']}; to edit the weights, "
                "use mask= with the neurons' down_proj columns"
            )
        op = spec.get("op")
        if spec.get("vector") is not None:
            op = "add" if op is None else op  # a steering vector is added
            if str(spec.get("on", "activation")).strip().lower() != "activation":
                raise PerturbationError(f"vector= adds a steering vector to the residual stream: it goes with on=activation, not on={spec['on']}")
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
            vector=_str(spec.get("vector")),
            neurons=_str(spec.get("neurons")),
            neuron=tuple(_int_list(spec["neuron"], "neuron")) if spec.get("neuron") is not None else (),
            lang=_lang(spec.get("lang")),
            on=str(spec.get("on", "activation" if spec.get("vector") is not None or neuron_kind else "param")).strip().lower(),
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
        if "=" in value or (key not in ("mask", "vector", "neurons") and re.search(r"\s", value.strip())):
            raise PerturbationError(f"malformed perturbation {text!r}: {part!r} holds more than one value; join key=value pairs with ':'")
        out[key] = value.strip()
    return out


def _region_label(region: Region) -> str:
    meta = region.metadata
    return f"region:{meta.get('name') or meta.get('kind') or 'unnamed'}@{region.digest()[:16]}"


def _lang(v: Any) -> str | None:
    """One language code of the 30 (the calibration language of neuron means and medians)."""
    if v is None:
        return None
    from lm_eval_lingreg.errors import UnknownLanguageError
    from lm_eval_lingreg.languages import LANGUAGES

    code = _str(v)
    if code is None or code.lower() not in LANGUAGES:
        raise UnknownLanguageError(f"lang={str(v)[:20]!r} is not one of the 30 languages ({','.join(LANGUAGES)})")
    return code.lower()


def _str(v: Any) -> str | None:
    if v is not None and (isinstance(v, bool) or not isinstance(v, (str, int))):
        raise PerturbationError(f"expected a name, got {str(v)[:60]!r}")
    return None if v is None else str(v).strip() or None


#: Largest whole number a spec may hold (indices, layers, dimensions, seeds): far above any real model's.
MAX_INT = 2**62
#: Most entries a `a-b` range may expand to (layers and hidden dimensions of any real model fit easily).
MAX_RANGE = 2**20


def _float(v: Any, key: str) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise PerturbationError(f"{key}={v!r} is not a number")
    try:
        return float(v)
    except (TypeError, ValueError, OverflowError) as exc:
        raise PerturbationError(f"{key}={str(v)[:40]!r} is not a number") from exc


def _int(v: Any, key: str) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float, str)) or (isinstance(v, float) and not v.is_integer()):
        raise PerturbationError(f"{key}={str(v)[:40]!r} is not a whole number")
    try:
        n = int(str(v).strip()) if isinstance(v, str) else int(v)
    except (ValueError, OverflowError) as exc:
        raise PerturbationError(f"{key}={str(v)[:40]!r} is not a whole number") from exc
    if abs(n) > MAX_INT:
        raise PerturbationError(f"{key}={str(v)[:40]}... is out of range (at most {MAX_INT:.3g})")
    return n


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
            a, b = (_int(y, key) for y in x.split("-"))
            if b < a:
                raise PerturbationError(f"{key}={x!r}: empty range")
            if b - a >= MAX_RANGE:
                raise PerturbationError(f"{key}={x!r}: a range of {b - a + 1:,} values is more than any model has ({MAX_RANGE:,} at most)")
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
    try:
        if isinstance(spec, (str, os.PathLike)):
            text = os.fspath(spec).strip() if isinstance(spec, os.PathLike) else spec.strip()
            if re.search(r"\.(ya?ml|json)$", text, re.IGNORECASE) or (not re.search(r"[=;]", text) and text):
                return _from_file(Path(text).expanduser(), text)
            return _from_text(text)
        return _from_data(spec, "the perturbation spec")
    except RecursionError as exc:
        raise PerturbationError("the perturbation spec is nested too deeply; expected a flat list of perturbations") from exc


def _from_text(text: str) -> list[Perturbation]:
    out = [Perturbation.parse(part) for part in text.split(";") if part.strip()]
    if not out:
        raise PerturbationError("empty perturbation; expected e.g. layer=1:dim=2100:op=mul:value=4")
    return out


def _from_file(path: Path, text: str) -> list[Perturbation]:
    from lm_eval_lingreg.strict import loads_yaml, read_text

    if not path.exists():
        raise PerturbationError(f"perturbation spec file {text!r} not found (or write it inline: layer=1:dim=2100:op=mul:value=4)")
    data = loads_yaml(read_text(path, PerturbationError, "perturbation spec file", max_bytes=2**20), PerturbationError, str(path))  # JSON is YAML too
    if data is None:
        raise PerturbationError(f"{path} is empty; expected a list of perturbations")
    try:
        return _from_data(data, str(path))
    except PerturbationError as e:
        raise PerturbationError(f"{path}: {e}") from e


def _from_data(data: Any, where: str) -> list[Perturbation]:
    if isinstance(data, str):
        return _from_text(data)
    if isinstance(data, Mapping):
        if "perturbations" not in data:
            return [Perturbation.from_dict(data)]
        data = data["perturbations"]
        data = [data] if isinstance(data, (Mapping, str)) else data
    if not isinstance(data, (list, tuple)):
        raise PerturbationError(f"{where}: expected a list of perturbations, got {type(data).__name__}")
    out: list[Perturbation] = []
    for item in data:
        if isinstance(item, Mapping):
            out.append(Perturbation.from_dict(item))
        elif isinstance(item, str):
            out.extend(_from_text(item))
        else:
            raise PerturbationError(f"{where}: each perturbation is a mapping or a compact string, got {type(item).__name__}")
    if not out:
        raise PerturbationError("the perturbation list is empty")
    return out


def spec_dicts(perturbations: Sequence[Perturbation]) -> list[dict[str, Any]]:
    return [p.to_dict() for p in perturbations]


def spec_sha256(perturbations: Sequence[Perturbation]) -> str:
    """A stable hash of what is perturbed (canonical JSON of the perturbations, in order)."""
    blob = json.dumps(spec_dicts(perturbations), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def spec_string(perturbations: Sequence[Perturbation]) -> str:
    return ";".join(str(p) for p in perturbations)
