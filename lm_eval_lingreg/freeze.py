"""Frozen regions: entries of a region keep their exact original values through training.

As in the paper's code, the frozen entries are written back after every optimizer step, so
neither the gradient, weight decay nor momentum (AdamW, SGD, anything) can move them. Only
the frozen entries' indices and original values are kept: memory is proportional to the
region, not to the model.

    frozen = FrozenRegion(model, region)          # captures the current values
    frozen.attach(optimizer)                      # restores after every optimizer.step()
    ...
    frozen.verify()                               # True: every frozen entry is bit-identical

With the transformers `Trainer`, pass `FreezeCallback(region)` in `callbacks=`. In a plain
loop either call `frozen.attach(optimizer)` once or `frozen.restore()` after each step.

With peft adapters the base weights do not train, but an adapter's update `B @ A` still
changes the effective weight of frozen entries. What is frozen is then the *merged* model:
`merge_and_reimpose(peft_model, frozen)` merges the adapters into the base weights and writes
the frozen entries back, so the merged model has the original values there.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import TrainerCallback

from lm_eval_lingreg.edits import SavedEntries
from lm_eval_lingreg.regions import Region, validate

__all__ = ["without_norms", "FrozenRegion", "merge_and_reimpose", "FreezeCallback"]


def without_norms(region: Region) -> Region:
    """The region minus its entries in norm weights (any tensor whose name contains `norm`): the
    official training never froze those (`if 'norm' in name: continue`)."""
    empty = torch.empty(0, dtype=torch.int64)
    indices = {n: (empty if "norm" in n else idx) for n, idx in region.indices.items()}
    return Region(indices, dict(region.shapes), {**region.metadata, "norms_frozen": False})


class FrozenRegion:
    """The original values of a region's entries, restorable into the model at any time."""

    def __init__(self, model: torch.nn.Module, region: Region) -> None:
        validate(region, model)
        self.region = region
        self.saved = SavedEntries.of(model, region.indices)
        self._hooks: list[Any] = []

    @property
    def model(self) -> torch.nn.Module:
        return self.saved.model

    @model.setter
    def model(self, model: torch.nn.Module) -> None:
        self.saved.model = model

    @property
    def num_frozen(self) -> int:
        return self.saved.num_entries

    @property
    def nbytes(self) -> int:
        """Memory held: the frozen entries' indices and values."""
        return self.saved.nbytes

    def restore(self) -> None:
        """Write the original values back into the frozen entries."""
        self.saved.restore(keep=True)

    def zero_grads(self) -> None:
        """Zero the frozen entries' gradients (optional: keeps them out of gradient-norm clipping)."""
        self.saved.zero_grads()

    def verify(self) -> bool:
        """True when every frozen entry equals its original value bit for bit."""
        return self.saved.verify()

    def attach(self, optimizer: torch.optim.Optimizer) -> FrozenRegion:
        """Restore the frozen entries after every `optimizer.step()`, whatever the optimizer."""
        self._hooks.append(optimizer.register_step_post_hook(lambda *_: self.restore()))
        return self

    def detach(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()


def merge_and_reimpose(model: torch.nn.Module, frozen: FrozenRegion) -> torch.nn.Module:
    """Merge peft adapters into the base weights, then put the frozen entries back; returns the plain model."""
    merged = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    frozen.model = merged
    frozen.restore()
    return merged


class FreezeCallback(TrainerCallback):
    """`Trainer(..., callbacks=[FreezeCallback(region)])`: the region's entries keep their values.

    The values are captured when training starts and written back after every optimizer step.
    """

    def __init__(self, region: Region) -> None:
        self.region = region
        self.frozen: FrozenRegion | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.frozen = FrozenRegion(model, self.region)

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.frozen is not None:
            self.frozen.restore()

    def on_step_end(self, args, state, control, **kwargs):
        if self.frozen is not None:
            self.frozen.restore()
