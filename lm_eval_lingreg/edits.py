"""The one weight-edit primitive: save chosen entries of a model's parameters, change them, put them back.

Ablating a region, perturbing weights and freezing a region during training all do the same
thing: remember the original values of some entries (by the parameter's real name and flat
indices) and write them back later, bit for bit. `SavedEntries` holds only those entries
(compact indices and their values, on the parameter's device), never a copy of the model.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Mapping

import torch

from lm_eval_lingreg.anatomy import named_parameters

#: Per model, the edits that hold saved entries, oldest first: restoring one that a later, still open
#: edit overlaps would write back values the later one then overwrites with the edited ones.
_OPEN: weakref.WeakKeyDictionary[torch.nn.Module, list[SavedEntries]] = weakref.WeakKeyDictionary()


def flat_view(param: torch.Tensor) -> torch.Tensor:
    return param.data.view(-1)


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
        """Remember the current values of `param` (named `name`) at flat indices `idx`; return them."""
        flat = flat_view(param)
        idx = _compact(idx, flat.numel(), flat.device)
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
                g.view(-1).index_fill_(0, idx.to(g.device).long(), 0.0)

    def __enter__(self) -> SavedEntries:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()
