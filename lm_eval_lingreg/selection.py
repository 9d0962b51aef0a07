"""Selection: per-tensor choice of entries (Top / Bottom / Random), as in the official code.

Selection is per tensor, not global: each tensor contributes `int(ratio * numel)` entries.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from lm_eval_lingreg.regions import Region, RegionError


def _check_ratio(ratio: float) -> float:
    ratio = float(ratio)
    if not 0.0 < ratio <= 1.0:
        raise RegionError(f"ratio must be in (0, 1], got {ratio} (for 1% pass 0.01)")
    return ratio


def select_random(shapes: Mapping[str, tuple[int, ...]], ratio: float, seed: int = 0, metadata: Mapping | None = None) -> Region:
    """Uniformly random `int(ratio * numel)` entries of each tensor, reproducible from `seed`."""
    ratio = _check_ratio(ratio)
    gen = torch.Generator().manual_seed(int(seed))
    indices = {}
    for name, shape in shapes.items():
        numel = 1
        for d in shape:
            numel *= int(d)
        k = int(ratio * numel)
        indices[name] = torch.sort(torch.randperm(numel, generator=gen)[:k]).values
    meta = {"kind": "random", "ratio": ratio, "seed": int(seed), **(metadata or {})}
    return Region(indices, dict(shapes), meta)
