"""The one weight-edit primitive: save chosen entries of a model's parameters, change them, put them back.

Ablating a region, perturbing weights and freezing a region during training all do the same
thing: remember the original values of some entries (by the parameter's real name and flat
indices) and write them back later, bit for bit. `SavedEntries` holds only those entries
(compact indices and their values, on the parameter's device), never a copy of the model.

A tensor-parallel model (`tp_plan`) holds sharded weights as DTensors: every edit acts on each
process's own shard (`local_entries` maps a region's global indices onto it), so the processes
together change exactly the entries one process would, and each restores its own shard.

Weights that accelerate offloads (a `device_map` with "cpu" or "disk" entries) are not in the model
at all until a forward pass or `save_pretrained` loads them: `offloaded_entries_set` has them read
with chosen entries set to a value, one tensor at a time as they are loaded, without touching disk.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from lm_eval_lingreg.anatomy import base_model, named_parameters

#: Per model, the edits that hold saved entries, oldest first: restoring one that a later, still open
#: edit overlaps would write back values the later one then overwrites with the edited ones.
_OPEN: weakref.WeakKeyDictionary[torch.nn.Module, list[SavedEntries]] = weakref.WeakKeyDictionary()


def is_dtensor(t: torch.Tensor) -> bool:
    """Whether `t` is a `torch.distributed` DTensor (a tensor-parallel weight or its gradient)."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def local_part(t: torch.Tensor) -> torch.Tensor:
    """What this process holds of `t`: a DTensor's local shard (sharing its storage), else the tensor itself."""
    data = t.data if isinstance(t, torch.nn.Parameter) else t
    if not is_dtensor(data):
        return data
    from lm_eval_lingreg.errors import UsageError

    if any(p.is_partial() for p in data.placements):
        raise UsageError(
            f"a weight of shape {tuple(data.shape)} is a DTensor with a pending reduction ({data.placements}): only sharded "
            "or replicated weights can be edited; load the model with tp_plan=auto"
        )
    local = data.to_local()
    if not local.is_contiguous():
        raise UsageError(f"the local shard of a DTensor weight of shape {tuple(data.shape)} is not contiguous and cannot be edited in place")
    return local


def flat_view(param: torch.Tensor) -> torch.Tensor:
    """This process's entries of `param`, flat, sharing its storage (for a DTensor: its local shard)."""
    return local_part(param).view(-1)


@dataclass(frozen=True)
class LocalEntries:
    """The entries of a parameter, chosen by global flat indices, that this process holds."""

    flat: torch.Tensor  #: this process's part of the parameter, flat, sharing its storage
    indices: torch.Tensor  #: the chosen entries held here, as indices into `flat` (int64)
    positions: torch.Tensor | None  #: where those entries stand in the chosen index list; None: all of it, in order


def local_entries(param: torch.Tensor, idx: torch.Tensor) -> LocalEntries:
    """Map global flat indices `idx` of `param` onto what this process holds: all of them for a plain tensor; for a
    DTensor, those inside its local shard (offsets and sizes as torch's distributed checkpoint reads them)."""
    flat = flat_view(param)
    data = param.data if isinstance(param, torch.nn.Parameter) else param
    if not is_dtensor(data):
        return LocalEntries(flat, idx.long(), None)
    (chunk,) = data.__create_chunk_list__()
    coords = torch.unravel_index(idx.long().cpu(), tuple(data.shape))
    keep = torch.ones(idx.numel(), dtype=torch.bool)
    for c, offset, size in zip(coords, chunk.offsets, chunk.sizes, strict=True):
        keep &= (c >= offset) & (c < offset + size)
    positions = keep.nonzero().squeeze(1)
    local = torch.zeros(positions.numel(), dtype=torch.int64)
    for c, offset, size in zip(coords, chunk.offsets, chunk.sizes, strict=True):
        local = local * size + (c[positions] - offset)
    return LocalEntries(flat, local, positions)


def _compact(idx: torch.Tensor, numel: int, device: torch.device) -> torch.Tensor:
    return idx.to(device=device, dtype=torch.int32 if numel < 2**31 else torch.int64)


class SavedEntries:
    """Original values of entries of a model's parameters, restorable exactly (newest first).

    The same entry may be saved several times (overlapping perturbations): restoring in
    reverse order of saving leaves every entry with its very first value.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self._entries: list[tuple[str, torch.Tensor, torch.Tensor]] = []

    @classmethod
    @torch.no_grad()
    def of(cls, model: torch.nn.Module, indices: Mapping[str, torch.Tensor]) -> SavedEntries:
        """Save the current values of `indices[name]` for every name (empty index tensors skipped)."""
        params = named_parameters(model)
        saved = cls(model)
        for name, idx in indices.items():
            if idx.numel():
                saved.save(name, params[name], idx)
        return saved

    @torch.no_grad()
    def save(self, name: str, param: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Remember the current values of `param` (named `name`) at flat indices `idx`; return them.

        For a DTensor, only the entries of this process's shard (see `local_entries`), in the order of `idx`."""
        local = local_entries(param, idx)
        flat = local.flat
        idx = _compact(local.indices, flat.numel(), flat.device)
        values = flat[idx.long()].clone()
        if not self._entries:
            _OPEN.setdefault(self.model, []).append(self)
        self._entries.append((name, idx, values))
        return values

    def _later_overlapping(self) -> SavedEntries | None:
        """A later edit of the same model, still open, that changed some of the same entries."""
        stack = _OPEN.get(self.model, [])
        if self not in stack:
            return None
        mine: dict[str, list[torch.Tensor]] = {}
        for name, idx, _ in self._entries:
            mine.setdefault(name, []).append(idx)
        for later in stack[stack.index(self) + 1 :]:
            for name, idx, _ in later._entries:
                if any(torch.isin(idx.long(), m.to(idx.device).long()).any() for m in mine.get(name, [])):
                    return later
        return None

    def check_restorable(self) -> None:
        """Refuse, before anything changes, a restore that would not bring the model back exactly."""
        from lm_eval_lingreg.errors import EditOrderError

        later = self._later_overlapping()
        if later is not None:
            raise EditOrderError(
                f"this edit ({self.num_entries:,} entries) changed entries that a later edit, still applied, changed again "
                f"({later.num_entries:,} entries): restore the later one first (edits come off in the reverse order they went on)"
            )

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
        return iter(self._entries)

    @property
    def num_entries(self) -> int:
        """Entries saved (in this process: a tensor-parallel process holds only its shards' entries)."""
        return sum(int(v.numel()) for _, _, v in self._entries)

    @property
    def nbytes(self) -> int:
        """Memory held: the saved entries' indices and values."""
        return sum(i.numel() * i.element_size() + v.numel() * v.element_size() for _, i, v in self._entries)

    @torch.no_grad()
    def restore(self, keep: bool = False) -> None:
        """Write every saved value back; forget them unless `keep` (a frozen region restores often).

        Refused (`EditOrderError`, nothing changed) while a later edit of the same entries is still applied."""
        if not keep:
            self.check_restorable()
        params = named_parameters(self.model)
        for name, idx, values in reversed(self._entries):
            flat = flat_view(params[name])
            flat.index_copy_(0, idx.to(flat.device).long(), values.to(flat.device, flat.dtype))
        if not keep:
            self._entries.clear()
            stack = _OPEN.get(self.model, [])
            if self in stack:
                stack.remove(self)

    @torch.no_grad()
    def verify(self) -> bool:
        """True when every saved entry holds its saved value, bit for bit."""
        params = named_parameters(self.model)
        for name, idx, values in self._entries:
            flat = flat_view(params[name])
            if not torch.equal(flat[idx.to(flat.device).long()], values.to(flat.device, flat.dtype)):
                return False
        return True

    @torch.no_grad()
    def zero_grads(self) -> None:
        """Zero the gradients of the saved entries (keeps frozen entries out of gradient clipping)."""
        params = named_parameters(self.model)
        for name, idx, _ in self._entries:
            g = params[name].grad
            if g is not None:
                flat_view(g).index_fill_(0, idx.to(g.device).long(), 0.0)

    def __enter__(self) -> SavedEntries:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()


def _offload_hook(module: torch.nn.Module | None) -> Any:
    """The accelerate hook that loads `module`'s offloaded weights on use (its `weights_map`), or None."""
    hook = getattr(module, "_hf_hook", None)
    return hook if getattr(hook, "offload", False) and getattr(hook, "weights_map", None) is not None else None


def offloaded(model: torch.nn.Module) -> dict[str, tuple[Any, str]]:
    """The parameters accelerate keeps off the model (a device map's "cpu"/"disk" offload: on the meta device until
    used), as {name: (the hook that loads it, its key in the hook's weights)}: the innermost hook, as transformers'
    `save_pretrained` reads them."""
    modules = dict(base_model(model).named_modules())
    out = {}
    for name, p in base_model(model).named_parameters():
        if p.device.type != "meta":
            continue
        parts = name.split(".")
        for k in range(len(parts) - 1, -1, -1):
            hook = _offload_hook(modules.get(".".join(parts[:k])))
            if hook is not None:
                out[name] = (hook, ".".join(parts[k:]))
                break
    return out


class _EntriesSet(Mapping):
    """An offload hook's weights, read with chosen entries set to a value (a copy of each tensor as it is loaded)."""

    def __init__(self, weights: Mapping[str, torch.Tensor], indices: Mapping[str, torch.Tensor], value: float) -> None:
        self.weights, self.indices, self.value = weights, indices, value

    def __getitem__(self, key: str) -> torch.Tensor:
        tensor = self.weights[key]
        if key not in self.indices:
            return tensor
        tensor = tensor.clone()
        tensor.view(-1).index_fill_(0, self.indices[key].to(tensor.device), self.value)
        return tensor

    def __iter__(self) -> Iterator[str]:
        return iter(self.weights)

    def __len__(self) -> int:
        return len(self.weights)


@contextlib.contextmanager
def offloaded_entries_set(model: torch.nn.Module, indices: Mapping[str, torch.Tensor], value: float) -> Iterator[None]:
    """While the block runs, the offloaded parameters named in `indices` (see `offloaded`) are read with those entries
    set to `value`, by a forward pass or `save_pretrained`; nothing on disk or in memory changes, and they read as
    before after the block."""
    where = offloaded(model)
    hooks: dict[int, tuple[Any, dict[str, torch.Tensor]]] = {}
    for name, idx in indices.items():
        hook, key = where[name]
        hooks.setdefault(id(hook), (hook, {}))[1][key] = idx
    originals = [(hook, hook.weights_map) for hook, _ in hooks.values()]
    try:
        for hook, chosen in hooks.values():
            hook.weights_map = _EntriesSet(hook.weights_map, chosen, value)
        yield
    finally:
        for hook, weights in originals:
            hook.weights_map = weights
