"""Regions: named sets of selected entries per parameter tensor, their algebra and their effect.

A `Region` maps real parameter names (`model.layers.1.mlp.down_proj.weight`) to sorted,
unique flat indices into that tensor, with the tensor's shape and free-form metadata
(model, kind, ratio, languages, provenance). File formats live in `region_io`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

#: Parameters inside the transformer blocks: the paper's scope (embeddings, final norm and
#: lm_head excluded).
DEFAULT_SCOPE = r"layers\.\d+\."
_MAX_LISTED = 5


class RegionError(ValueError):
    """A region that is malformed in itself (bad indices, bad file, bad arguments)."""


class RegionMismatchError(RegionError):
    """A region that does not fit the model it is applied to."""


@dataclass
class Region:
    """Selected entries per parameter tensor.

    `indices[name]` is a sorted, unique int64 tensor of flat indices into a tensor of shape
    `shapes[name]`. Build one with `Region.from_masks` or `Region.from_indices`.
    """

    indices: dict[str, torch.Tensor]
    shapes: dict[str, tuple[int, ...]]
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = sorted(set(self.indices) - set(self.shapes))
        if missing:
            raise RegionError(f"region lists indices but no shape for {_first(missing)}")
        for name, idx in self.indices.items():
            numel = _numel(self.shapes[name])
            if idx.dtype != torch.int64 or idx.dim() != 1:
                raise RegionError(f"{name}: indices must be a 1-D int64 tensor, got {idx.dtype} {tuple(idx.shape)}")
            if idx.numel() and (int(idx[0]) < 0 or int(idx[-1]) >= numel):
                raise RegionError(
                    f"{name}: index out of range for shape {self.shapes[name]} "
                    f"(valid 0..{numel - 1}, got {int(idx.min())}..{int(idx.max())})"
                )
            if idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all()):
                raise RegionError(f"{name}: indices must be sorted and unique")
        self.shapes = {n: tuple(int(d) for d in s) for n, s in self.shapes.items()}

    # construction ----------------------------------------------------------------

    @classmethod
    def from_indices(
        cls,
        indices: Mapping[str, torch.Tensor | Iterable[int]],
        shapes: Mapping[str, Iterable[int]],
        metadata: Mapping[str, Any] | None = None,
    ) -> Region:
        """From flat indices in any order (duplicates allowed)."""
        clean = {n: torch.unique(torch.as_tensor(i, dtype=torch.int64).reshape(-1)) for n, i in indices.items()}
        return cls(clean, {n: tuple(s) for n, s in shapes.items()}, dict(metadata or {}))

    @classmethod
    def from_masks(cls, masks: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None = None) -> Region:
        """From boolean tensors shaped like the parameters (True = selected)."""
        indices, shapes = {}, {}
        for name, mask in masks.items():
            if mask.dtype != torch.bool:
                raise RegionError(f"{name}: expected a bool mask, got dtype {mask.dtype}")
            indices[name] = torch.nonzero(mask.reshape(-1), as_tuple=False).reshape(-1).to(torch.int64)
            shapes[name] = tuple(mask.shape)
        return cls(indices, shapes, dict(metadata or {}))

    # views -----------------------------------------------------------------------

    def mask(self, name: str) -> torch.Tensor:
        """The boolean mask of one tensor."""
        out = torch.zeros(_numel(self.shapes[name]), dtype=torch.bool)
        out[self.indices[name]] = True
        return out.reshape(self.shapes[name])

    def masks(self) -> Iterable[tuple[str, torch.Tensor]]:
        for name in self.indices:
            yield name, self.mask(name)

    @property
    def num_selected(self) -> int:
        return sum(int(i.numel()) for i in self.indices.values())

    @property
    def num_covered(self) -> int:
        """Number of entries in the tensors the region covers (selected or not)."""
        return sum(_numel(s) for s in self.shapes.values())

    @property
    def density(self) -> float:
        return self.num_selected / max(1, self.num_covered)

    def __len__(self) -> int:
        return self.num_selected

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Region):
            return NotImplemented
        return (
            self.shapes == other.shapes
            and self.indices.keys() == other.indices.keys()
            and all(torch.equal(self.indices[n], other.indices[n]) for n in self.indices)
            and self.metadata == other.metadata
        )

    def with_metadata(self, **updates: Any) -> Region:
        return Region(dict(self.indices), dict(self.shapes), {**self.metadata, **updates})

    # algebra ---------------------------------------------------------------------

    def _combine(self, other: Region, op: str) -> Region:
        conflicts = [n for n in set(self.shapes) & set(other.shapes) if self.shapes[n] != other.shapes[n]]
        if conflicts:
            raise RegionMismatchError(
                f"cannot {op} regions whose tensors differ in shape: {_first(sorted(conflicts))}"
            )
        names = list(self.shapes) + [n for n in other.shapes if n not in self.shapes]
        empty = torch.empty(0, dtype=torch.int64)
        out: dict[str, torch.Tensor] = {}
        for n in names:
            a, b = self.indices.get(n, empty), other.indices.get(n, empty)
            if op == "union":
                out[n] = torch.unique(torch.cat([a, b]))
            elif op == "intersection":
                out[n] = a[torch.isin(a, b)]
            else:
                out[n] = a[~torch.isin(a, b)]
        shapes = {n: self.shapes.get(n) or other.shapes[n] for n in names}
        meta = {"kind": op, "operands": [self.metadata.get("name") or self.metadata.get("kind"), other.metadata.get("name") or other.metadata.get("kind")]}
        return Region(out, shapes, meta)

    def union(self, other: Region) -> Region:
        return self._combine(other, "union")

    def intersection(self, other: Region) -> Region:
        return self._combine(other, "intersection")

    def difference(self, other: Region) -> Region:
        return self._combine(other, "difference")

    def complement(self) -> Region:
        """All entries of the covered tensors that are not selected."""
        out = {}
        for n, idx in self.indices.items():
            keep = torch.ones(_numel(self.shapes[n]), dtype=torch.bool)
            keep[idx] = False
            out[n] = torch.nonzero(keep).reshape(-1)
        return Region(out, dict(self.shapes), {"kind": "complement", "operands": [self.metadata.get("kind")]})

    __or__ = union
    __and__ = intersection
    __sub__ = difference
    __invert__ = complement


def _numel(shape: Iterable[int]) -> int:
    return math.prod(int(d) for d in shape)


def _first(items: list, k: int = _MAX_LISTED) -> str:
    shown = ", ".join(str(i) for i in items[:k])
    return shown + (f" ... ({len(items)} in all)" if len(items) > k else "")


# parameters of a model -----------------------------------------------------------------


def named_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The model's parameters under their plain transformers names.

    A peft-wrapped model is unwrapped and `.base_layer` dropped, so a region made on the
    base model addresses the same base weights; adapter weights are left out.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    out = {}
    for name, p in base.named_parameters(remove_duplicate=False):
        if "lora_" in name or ".modules_to_save." in name or "original_module" in name:
            continue
        out.setdefault(name.replace(".base_layer.", "."), p)
    return out


def scope_shapes(model: torch.nn.Module, scope: str = DEFAULT_SCOPE) -> dict[str, tuple[int, ...]]:
    """Shapes of the parameters whose name matches the scope pattern."""
    pattern = re.compile(scope)
    return {n: tuple(p.shape) for n, p in named_parameters(model).items() if pattern.search(n)}


def validate(region: Region, model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Check the region fits the model; return the targeted parameters.

    Unknown names, shape mismatches, out-of-range indices and parameters that cannot be
    modified in place are all reported in one `RegionMismatchError`.
    """
    params = named_parameters(model)
    unknown = [n for n in region.indices if n not in params]
    shape = [
        f"{n} (mask {region.shapes[n]}, model {tuple(params[n].shape)})"
        for n in region.indices
        if n in params and tuple(params[n].shape) != region.shapes[n]
    ]
    out_of_range = [
        f"{n} (max index {int(i[-1])} >= {params[n].numel()} entries)"
        for n, i in region.indices.items()
        if n in params and i.numel() and int(i[-1]) >= params[n].numel()
    ]
    offloaded = [n for n in region.indices if n in params and params[n].device.type == "meta"]
    uneditable = [
        f"{n} ({params[n].dtype})"
        for n in region.indices
        if n in params and not (params[n].is_floating_point() and params[n].is_contiguous())
    ]
    problems = []
    if unknown:
        example = next(iter(params), "?")
        problems.append(
            f"{len(unknown)} parameter name(s) not in the model: {_first(unknown)} "
            f"(the model's names look like {example!r}; was the mask made for another model?)"
        )
    if shape:
        problems.append(f"{len(shape)} shape mismatch(es): {_first(shape)}")
    if out_of_range:
        problems.append(f"{len(out_of_range)} tensor(s) with out-of-range indices: {_first(out_of_range)}")
    if offloaded:
        problems.append(
            f"{len(offloaded)} targeted parameter(s) are offloaded (meta device): {_first(offloaded)}; "
            "write an ablated checkpoint with `lingreg apply` and evaluate that instead"
        )
    if uneditable:
        problems.append(
            f"{len(uneditable)} targeted parameter(s) are quantized or non-contiguous and cannot be "
            f"edited in place: {_first(uneditable)}; load the model in a float dtype"
        )
    if problems:
        model_name = getattr(getattr(model, "config", None), "name_or_path", "") or type(model).__name__
        made_for = region.metadata.get("model")
        raise RegionMismatchError(
            f"region does not fit model {model_name!r}"
            + (f" (the region was made for {made_for!r})" if made_for else "")
            + ":\n  - "
            + "\n  - ".join(problems)
            + "\nUse a region extracted from this model (see `lingreg extract`), or check its names with `lingreg mask info`."
        )
    return {n: params[n] for n in region.indices}


@torch.no_grad()
def apply(region: Region, model: torch.nn.Module, value: float = 0.0) -> dict[str, torch.Tensor]:
    """Set the region's entries of `model` to `value` in place.

    Validates everything before changing anything. Returns the original values of the
    changed entries, which `restore` puts back exactly.
    """
    if not torch.isfinite(torch.tensor(float(value))):
        raise RegionError(f"mask_value must be a finite number, got {value!r}")
    params = validate(region, model)
    saved = {}
    for name, idx in region.indices.items():
        flat = _flat(params[name])
        idx = idx.to(flat.device)
        saved[name] = flat[idx].clone()
        flat.index_fill_(0, idx, value)
    return saved


@torch.no_grad()
def restore(region: Region, model: torch.nn.Module, saved: Mapping[str, torch.Tensor]) -> None:
    """Undo `apply`: put the saved original values back."""
    params = named_parameters(model)
    for name, idx in region.indices.items():
        flat = _flat(params[name])
        flat.index_copy_(0, idx.to(flat.device), saved[name].to(flat.device))


def _flat(p: torch.Tensor) -> torch.Tensor:
    return p.data.view(-1)


# inspection ------------------------------------------------------------------------------

_LAYER = re.compile(r"layers\.(\d+)\.(.+?)(?:\.weight|\.bias)?$")


def summarize(region: Region) -> list[dict[str, Any]]:
    """Selected entries per (layer, module), with the share of that module's entries."""
    rows = []
    for name, shape in region.shapes.items():
        m = _LAYER.search(name)
        layer, module = (int(m.group(1)), m.group(2)) if m else (None, name)
        n = int(region.indices[name].numel()) if name in region.indices else 0
        rows.append({"name": name, "layer": layer, "module": module, "selected": n, "entries": _numel(shape), "share": n / max(1, _numel(shape))})
    return rows


def jaccard(a: Region, b: Region) -> tuple[float, dict[str, float]]:
    """Jaccard index |a & b| / |a | b|, overall and per tensor (as the official code computes it)."""
    per, inter_total, union_total = {}, 0, 0
    empty = torch.empty(0, dtype=torch.int64)
    for name in list(a.shapes) + [n for n in b.shapes if n not in a.shapes]:
        x, y = a.indices.get(name, empty), b.indices.get(name, empty)
        inter = int(torch.isin(x, y).sum())
        union = int(x.numel() + y.numel() - inter)
        per[name] = inter / union if union else float("nan")
        inter_total += inter
        union_total += union
    return (inter_total / union_total if union_total else float("nan")), per
