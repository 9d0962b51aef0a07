"""Which hidden dimensions a region concentrates on, and how large the activations there are.

A hidden dimension d of the residual stream appears in every layer as entry d of the norm
weights, row d of o_proj/down_proj (what a layer writes to d) and column d of
q/k/v/gate/up_proj (what a layer reads from d). Every dimension has the same number of entries,
so the raw count of region entries on a dimension ranks dimensions directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lm_eval_lingreg.anatomy import base_model, residual_slots
from lm_eval_lingreg.errors import CorpusError, RegionError
from lm_eval_lingreg.regions import Region

ROLES = ("norm", "read", "write")
#: Most cells of the (role, layer, dimension) count table: 1 GB of int64, far above any real model (e.g. 3 x 126 x 16384).
MAX_COUNTS = 2**27
#: The largest hidden size a mask may imply (real models stay far below: 16,384 for Llama-3.1-405B).
MAX_HIDDEN = 2**18


@dataclass
class DimensionCounts:
    """Region entries per (role, layer, hidden dimension)."""

    counts: torch.Tensor  # [3 roles, layers, hidden], int64
    entries: torch.Tensor  # [3 roles, layers]: entries one dimension has in that role and layer
    hidden: int
    metadata: dict[str, Any]

    @property
    def total(self) -> torch.Tensor:
        """Entries per dimension, all roles and layers summed."""
        return self.counts.sum(dim=(0, 1))

    @property
    def entries_per_dim(self) -> int:
        return int(self.entries.sum())

    def ranked(self, top: int | None = None) -> list[int]:
        total = self.total
        order = sorted(range(self.hidden), key=lambda d: (-int(total[d]), d))
        return order[:top] if top else order

    def row(self, d: int) -> dict[str, Any]:
        c = self.counts[:, :, d]
        by_layer = c.sum(0)
        layers = [int(i) for i in by_layer.argsort(descending=True)[:3] if by_layer[i] > 0]
        return {
            "dim": d,
            "total": int(c.sum()),
            "share": int(c.sum()) / max(1, self.entries_per_dim),
            **{role: int(c[i].sum()) for i, role in enumerate(ROLES)},
            "top_layers": {int(la): int(by_layer[la]) for la in layers},
        }

    def to_json(self, top: int | None = None, activations: dict[str, Any] | None = None) -> dict[str, Any]:
        total = self.total.double()
        out = {
            "hidden_size": self.hidden,
            "layers": int(self.counts.shape[1]),
            "entries_per_dim": self.entries_per_dim,
            "mean_per_dim": float(total.mean()),
            "median_per_dim": float(total.median()),
            "region": self.metadata,
            "dims": [self.row(d) for d in self.ranked(top)],
        }
        if activations:
            out["activations"] = {k: v for k, v in activations.items() if k != "per_layer"}
            for r in out["dims"]:
                r["mean_abs_activation"] = activations["mean_abs"][r["dim"]]
                r["activation_rank"] = activations["rank"][r["dim"]]
        return out


def dimension_counts(region: Region, hidden: int | None = None) -> DimensionCounts:
    """Count the region's entries per hidden dimension (norm entries, rows written, columns read)."""
    slots, hidden = residual_slots(region.shapes, hidden)
    if not slots:
        raise RegionError("the region covers no per-layer norm or projection tensors, so it has no hidden dimensions to count")
    n_layers = max(s.layer for s in slots.values()) + 1
    if hidden > MAX_HIDDEN:
        raise RegionError(
            f"the region's shapes imply a hidden size of {hidden:,}, more than any real model's (at most {MAX_HIDDEN:,} here); "
            "the mask is corrupt or not a language model's: check it with `lingreg mask info`"
        )
    if 3 * n_layers * hidden > MAX_COUNTS:
        raise RegionError(
            f"the region's names and shapes describe {n_layers:,} layers of hidden size {hidden:,}, more than any real model; "
            "check them with `lingreg mask info`"
        )
    counts = torch.zeros(len(ROLES), n_layers, hidden, dtype=torch.int64)
    entries = torch.zeros(len(ROLES), n_layers, dtype=torch.int64)
    for name, slot in slots.items():
        r = ROLES.index(slot.role)
        entries[r, slot.layer] += slot.entries_per_dim
        idx = region.indices.get(name)
        if idx is not None and idx.numel():
            counts[r, slot.layer] += slot.counts(idx, hidden)
    return DimensionCounts(counts, entries, hidden, dict(region.metadata))


@torch.no_grad()
def mean_abs_activations(model: torch.nn.Module, tokenizer: Any, texts: Sequence[str], max_tokens: int = 128) -> dict[str, Any]:
    """Mean |hidden state| per dimension over the tokens of `texts`, at every layer's input.

    Returns `mean_abs` (averaged over layers 1..L, i.e. after the first block), `per_layer`
    ([layers+1][hidden]), `rank` (1 = largest) and the ratio of the largest to the median.
    """
    from lm_eval_lingreg.capture import body, hooked
    from lm_eval_lingreg.interventions import decoder_layers

    names = {id(m): n for n, m in base_model(model).named_modules()}
    layers = decoder_layers(model)
    states: dict[int, torch.Tensor] = {}

    def keep(i: int):
        def fn(x: torch.Tensor) -> None:
            states[i] = x[0].float().abs().cpu()

        return fn

    sums: torch.Tensor | None = None
    n = 0
    with hooked(model, {names[id(m)]: keep(i) for i, m in layers.items()}, "input"):  # each layer's input, then the normed output
        for text in texts:
            ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_tokens).input_ids
            last = body(model)(input_ids=ids.to(model.device), use_cache=False).last_hidden_state
            h = torch.stack([*(states[i] for i in sorted(layers)), last[0].float().abs().cpu()])  # [L+1, T, H]
            sums = h.sum(1) if sums is None else sums + h.sum(1)
            n += h.shape[1]
    if sums is None:
        raise CorpusError("no calibration texts for the activation statistics")
    per_layer = sums / n
    mean_abs = per_layer[1:].mean(0)
    order = mean_abs.argsort(descending=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(1, order.numel() + 1)
    return {
        "tokens": n,
        "texts": len(texts),
        "mean_abs": [round(float(v), 6) for v in mean_abs],
        "rank": [int(r) for r in rank],
        "top": [int(d) for d in order[:10]],
        "max_over_median": float(mean_abs.max() / mean_abs.median()),
        "per_layer": per_layer.tolist(),
    }
