"""Regions: named sets of selected entries per parameter tensor, their algebra and their effect.

A `Region` maps real parameter names (`model.layers.1.mlp.down_proj.weight`) to sorted,
unique flat indices into that tensor (always on the CPU), with the tensor's shape and
free-form metadata (model, kind, ratio, languages, provenance). File formats live in
`region_io`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from lm_eval_lingreg.anatomy import editability_problems, layer_module, model_name, named_parameters, numel
from lm_eval_lingreg.edits import SavedEntries, local_entries
from lm_eval_lingreg.errors import RegionError, RegionMismatchError, first

__all__ = [
    "MAX_TENSOR_NUMEL",
    "MAX_NAME",
    "check_name",
    "check_shape",
    "Region",
    "validate",
    "check_value",
    "apply",
    "restore",
    "summarize",
    "totals_by",
    "jaccard",
]

#: Largest tensor a region may describe (entries); far above any single weight of a 70B model.
MAX_TENSOR_NUMEL = 2**36
#: Longest parameter name (it becomes a file name, `<name>.pt`, in the official layout).
MAX_NAME = 200
_BAD_NAME = re.compile(r"[\x00-\x1f\x7f/\\]")


def check_name(name: object) -> str:
    """A parameter name as a region may hold it: dotted, non-empty parts, no path separators, at most MAX_NAME characters.

    Names become file names in the official layout; one that could point outside a folder
    (`../x`, `/abs/x`) is refused here, wherever it came from.
    """
    if not isinstance(name, str) or not name or len(name) > MAX_NAME or _BAD_NAME.search(name) or "" in name.split("."):
        raise RegionError(
            f"invalid parameter name {str(name)[:120]!r}: expected a dotted name like 'model.layers.0.mlp.down_proj.weight' "
            "(no '/', '\\', control characters or empty parts)"
        )
    return name


def check_shape(name: str, shape: object) -> tuple[int, ...]:
    """A declared tensor shape: a list of non-negative whole numbers, at most MAX_TENSOR_NUMEL entries."""
    if not isinstance(shape, (list, tuple)) or len(shape) > 8 or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise RegionError(f"{name}: shape {str(shape)[:80]} is not a list of non-negative whole numbers")
    if any(d > MAX_TENSOR_NUMEL for d in shape):  # checked first: a 4,000-digit size is no float to format
        big = next(d for d in shape if d > MAX_TENSOR_NUMEL)
        size = str(big) if len(str(big)) <= 20 else f"a number of {len(str(big)):,} digits"
        raise RegionError(f"{name}: declared shape has a size of {size}, more than any real parameter tensor ({MAX_TENSOR_NUMEL:.3g} entries)")
    if numel(shape) > MAX_TENSOR_NUMEL:
        raise RegionError(f"{name}: declared shape {list(shape)} has {numel(shape):.3g} entries, more than any real parameter tensor ({MAX_TENSOR_NUMEL:.3g})")
    return tuple(int(d) for d in shape)


@dataclass
class Region:
    """Selected entries per parameter tensor.

    `indices[name]` is a sorted, unique int64 CPU tensor of flat indices into a tensor of shape
    `shapes[name]`. Build one with `Region.from_masks` or `Region.from_indices`.
    """

    indices: dict[str, torch.Tensor]
    shapes: dict[str, tuple[int, ...]]
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.shapes = {check_name(n): check_shape(n, tuple(s) if isinstance(s, (list, tuple)) else s) for n, s in self.shapes.items()}
        missing = sorted(set(self.indices) - set(self.shapes))
        if missing:
            raise RegionError(f"region lists indices but no shape for {first(missing)}")
        for name, idx in list(self.indices.items()):
            if not isinstance(idx, torch.Tensor) or idx.dtype != torch.int64 or idx.dim() != 1:
                raise RegionError(
                    f"{name}: indices must be a 1-D int64 tensor, got {getattr(idx, 'dtype', type(idx).__name__)} {tuple(getattr(idx, 'shape', ()))}"
                )
            idx = self.indices[name] = idx.cpu()
            size = numel(self.shapes[name])
            if idx.numel() and (int(idx[0]) < 0 or int(idx[-1]) >= size):
                raise RegionError(f"{name}: index out of range for shape {self.shapes[name]} (valid 0..{size - 1}, got {int(idx.min())}..{int(idx.max())})")
            if idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all()):
                raise RegionError(f"{name}: indices must be sorted and unique")

    # construction ----------------------------------------------------------------

    @classmethod
    def from_indices(
        cls,
        indices: Mapping[str, torch.Tensor | Iterable[int]],
        shapes: Mapping[str, Iterable[int]],
        metadata: Mapping[str, Any] | None = None,
    ) -> Region:
        """From flat indices in any order and on any device (duplicates allowed)."""
        clean = {n: torch.unique(torch.as_tensor(i).to("cpu", torch.int64).reshape(-1)) for n, i in indices.items()}
        return cls(clean, {n: tuple(s) for n, s in shapes.items()}, dict(metadata or {}))

    @classmethod
    def from_masks(cls, masks: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None = None) -> Region:
        """From boolean tensors shaped like the parameters (True = selected), on any device."""
        indices, shapes = {}, {}
        for name, mask in masks.items():
            if mask.dtype != torch.bool:
                raise RegionError(f"{name}: expected a bool mask, got dtype {mask.dtype}")
            indices[name] = torch.nonzero(mask.reshape(-1), as_tuple=False).reshape(-1).to("cpu", torch.int64)
            shapes[name] = tuple(mask.shape)
        return cls(indices, shapes, dict(metadata or {}))

    # views -----------------------------------------------------------------------

    def mask(self, name: str) -> torch.Tensor:
        """The boolean mask of one tensor (CPU)."""
        out = torch.zeros(numel(self.shapes[name]), dtype=torch.bool)
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
        return sum(numel(s) for s in self.shapes.values())

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

    def digest(self) -> str:
        """sha256 of the selection (names, shapes and indices; not the metadata)."""
        h = hashlib.sha256()
        for name in sorted(self.shapes):
            h.update(f"{name}\0{list(self.shapes[name])}\0".encode())
            if name in self.indices:
                h.update(self.indices[name].numpy().tobytes())
        return h.hexdigest()

    def with_metadata(self, **updates: Any) -> Region:
        return Region(dict(self.indices), dict(self.shapes), {**self.metadata, **updates})

    # algebra ---------------------------------------------------------------------

    def _check_shapes(self, other: Region, op: str) -> None:
        conflicts = [n for n in set(self.shapes) & set(other.shapes) if self.shapes[n] != other.shapes[n]]
        if conflicts:
            names = " and ".join(str(getattr(r, "source", None) or "a region") for r in (self, other))
            verb = op if op == "compare" else f"take the {op} of"
            raise RegionMismatchError(
                f"cannot {verb} {names}: their tensors differ in shape ({first(sorted(conflicts))}); were they made for different models?"
            )

    def _combine(self, other: Region, op: str) -> Region:
        self._check_shapes(other, op)
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
            keep = torch.ones(numel(self.shapes[n]), dtype=torch.bool)
            keep[idx] = False
            out[n] = torch.nonzero(keep).reshape(-1)
        return Region(out, dict(self.shapes), {"kind": "complement", "operands": [self.metadata.get("kind")]})

    __or__ = union
    __and__ = intersection
    __sub__ = difference
    __invert__ = complement


# a region on a model ---------------------------------------------------------------------------


def validate(region: Region, model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Check the region fits the model; return the targeted parameters.

    Unknown names, shape mismatches, out-of-range indices and parameters that cannot be
    modified in place are all reported in one `RegionMismatchError`.
    """
    params = named_parameters(model)
    unknown = [n for n in region.indices if n not in params]
    known = {n: params[n] for n in region.indices if n in params}
    shape = [f"{n} (mask {region.shapes[n]}, model {tuple(p.shape)})" for n, p in known.items() if tuple(p.shape) != region.shapes[n]]
    problems = []
    if unknown:
        problems.append(
            f"{len(unknown)} parameter name(s) not in the model: {first(unknown)} "
            f"(the model's names look like {next(iter(params), '?')!r}; was the mask made for another model?)"
        )
    if shape:
        problems.append(f"{len(shape)} shape mismatch(es): {first(shape)}")
    problems += editability_problems({n: p for n, p in known.items() if region.indices[n].numel()})
    if problems:
        made_for = region.metadata.get("model")
        raise RegionMismatchError(
            f"region{' ' + str(region.source) if getattr(region, 'source', None) else ''} does not fit model {model_name(model)!r}"
            + (f" (the region was made for {made_for!r})" if made_for else "")
            + ": "
            + "; ".join(problems)
            + ". Use a region extracted from this model (see `lingreg extract`), or check its names with `lingreg mask info`."
        )
    return {n: params[n] for n in region.indices}


def check_value(value: float, params: Iterable[torch.Tensor], what: str = "mask_value") -> float:
    """A finite value that every target dtype can hold (1e39 overflows float32, 7e4 float16)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        value = float(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise RegionError(f"{what}={str(value)[:40]!r} is not a number") from exc
    if value != value or value in (float("inf"), float("-inf")):
        raise RegionError(f"{what} must be a finite number, got {value!r}")
    for dtype in {p.dtype for p in params}:
        if not torch.isfinite(torch.tensor(value, dtype=torch.float64).to(dtype)):
            raise RegionError(f"{what}={value:g} overflows {str(dtype).removeprefix('torch.')} (largest {torch.finfo(dtype).max:.3g}); use a smaller value")
    return value


@torch.no_grad()
def apply(region: Region, model: torch.nn.Module, value: float = 0.0) -> SavedEntries:
    """Set the region's entries of `model` to `value` in place.

    Validates everything before changing anything. Returns the original values of the changed
    entries; `saved.restore()` (or `restore(region, model, saved)`) puts them back exactly.
    """
    params = validate(region, model)
    value = check_value(value, [params[n] for n, i in region.indices.items() if i.numel()])
    saved = SavedEntries(model)
    for name, idx in region.indices.items():
        if idx.numel():
            saved.save(name, params[name], idx)
            local = local_entries(params[name], idx)  # a tensor-parallel process changes its own shard's entries
            local.flat.index_fill_(0, local.indices.to(local.flat.device), value)
    return saved


def restore(region: Region, model: torch.nn.Module, saved: SavedEntries) -> None:
    """Undo `apply`: put the saved original values back."""
    saved.restore()


# inspection ------------------------------------------------------------------------------


def summarize(region: Region) -> list[dict[str, Any]]:
    """Selected entries per (layer, module), with the share of that module's entries."""
    rows = []
    for name, shape in region.shapes.items():
        layer, module = layer_module(name)
        n = int(region.indices[name].numel()) if name in region.indices else 0
        rows.append({"name": name, "layer": layer, "module": module, "selected": n, "entries": numel(shape), "share": n / max(1, numel(shape))})
    return rows


def totals_by(rows: list[dict[str, Any]], key: str) -> dict[Any, tuple[int, int]]:
    """(selected, entries) summed over `summarize` rows per `key` ('module' or 'layer'); None last."""
    out: dict[Any, list[int]] = {}
    for r in rows:
        acc = out.setdefault(r[key], [0, 0])
        acc[0] += r["selected"]
        acc[1] += r["entries"]
    order = sorted(out, key=lambda k: (k is None, k if k is not None else 0)) if key == "layer" else list(out)
    return {k: (out[k][0], out[k][1]) for k in order}


def jaccard(a: Region, b: Region) -> tuple[float, dict[str, float]]:
    """Jaccard index |a & b| / |a | b|, overall and per tensor (as the official code computes it)."""
    a._check_shapes(b, "compare")
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
