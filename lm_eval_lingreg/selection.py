"""Selection: per-tensor choice of entries (Top / Bottom / Random), as in the official code.

Selection is per tensor, not global: each tensor contributes `int(ratio * numel)` entries.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch

from lm_eval_lingreg.errors import RegionError
from lm_eval_lingreg.regions import Region

__all__ = ["check_ratio", "select_random", "WHICH", "select_tensor", "select_core", "select_monolingual", "select_monolingual_all"]


def _generator(seed: int) -> torch.Generator:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise RegionError(f"seed must be a whole number from 0 to 2**63 - 1, got {str(seed)[:30]}")
    return torch.Generator().manual_seed(seed)


def check_ratio(ratio: float) -> float:
    ratio = float(ratio)
    if not 0.0 < ratio <= 1.0:
        raise RegionError(f"ratio must be in (0, 1], got {ratio} (for 1% pass 0.01)")
    return ratio


def select_random(shapes: Mapping[str, tuple[int, ...]], ratio: float, seed: int = 0, metadata: Mapping | None = None) -> Region:
    """Uniformly random `int(ratio * numel)` entries of each tensor, reproducible from `seed`."""
    ratio = check_ratio(ratio)
    gen = _generator(seed)
    indices = {}
    for name, shape in shapes.items():
        numel = math.prod(shape)
        k = int(ratio * numel)
        indices[name] = torch.sort(torch.randperm(numel, generator=gen)[:k]).values
    meta = {"kind": "random", "ratio": ratio, "seed": int(seed), **(metadata or {})}
    return Region(indices, dict(shapes), meta)


WHICH = ("top", "bottom", "random")


def _check_informative(informative: bool, langs: Sequence[str]) -> None:
    if not informative:
        raise RegionError(
            f"the importance scores of {', '.join(langs)} are all zero, so no entry ranks above another; rescore with real text (`lingreg score --overwrite`)"
        )


def select_tensor(score: torch.Tensor, k: int, which: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sorted flat indices of `k` entries of one tensor: largest, smallest or random by `score`."""
    flat = score.reshape(-1)
    if which == "top":
        idx = torch.topk(flat, k, largest=True, sorted=False).indices
    elif which == "bottom":
        idx = torch.topk(flat, k, largest=False, sorted=False).indices
    elif which == "random":
        idx = torch.randperm(flat.numel(), generator=generator)[:k]
    else:
        raise RegionError(f"unknown selection {which!r}; expected one of {', '.join(WHICH)}")
    return torch.sort(idx).values


def select_core(
    get: Callable[[str, str], torch.Tensor],
    names: Iterable[str],
    langs: Sequence[str],
    ratio: float,
    which: str = "top",
    seed: int = 0,
    metadata: Mapping | None = None,
) -> Region:
    """Core region: per tensor, Top/Bottom/Random of S = sum over `langs` of |s_l|.

    `get(lang, name)` returns s_l of one tensor, so score files are read one tensor at a time.
    """
    ratio = check_ratio(ratio)
    gen = _generator(seed)
    indices, shapes = {}, {}
    informative = False
    for name in names:
        total = None
        for lang in langs:
            s = get(lang, name).to(torch.float32).abs()
            total = s if total is None else total.add_(s)
        informative |= bool(total.any())
        shapes[name] = tuple(total.shape)
        indices[name] = select_tensor(total, int(ratio * total.numel()), which, gen)
    _check_informative(informative, langs)
    meta = {"kind": f"core-{which}", "ratio": ratio, "languages": list(langs), **({"seed": int(seed)} if which == "random" else {}), **(metadata or {})}
    return Region(indices, shapes, meta)


def select_monolingual(
    get: Callable[[str, str], torch.Tensor],
    names: Iterable[str],
    lang: str,
    langs: Sequence[str],
    ratio: float,
    metadata: Mapping | None = None,
    which: str = "top",
) -> Region:
    """Monolingual region of `lang`: Top-k(|s_lang|) minus the union of Top-k(|s_o|), o in `langs` - {lang}.

    `which="bottom"` builds the official code's control the same way from Bottom-k: the entries
    least important to `lang` that are not among the least important to any other language.
    """
    if lang not in langs:
        raise RegionError(f"monolingual region of {lang!r} needs it among --langs plus at least one other language (got {list(langs)})")
    return select_monolingual_all(get, names, langs, ratio, metadata, which, only=[lang])[lang]


def select_monolingual_all(
    get: Callable[[str, str], torch.Tensor],
    names: Iterable[str],
    langs: Sequence[str],
    ratio: float,
    metadata: Mapping | None = None,
    which: str = "top",
    only: Sequence[str] | None = None,
) -> dict[str, Region]:
    """The monolingual regions of every language of `langs` (or of `only`), each language's k entries chosen once."""
    ratio = check_ratio(ratio)
    if which not in ("top", "bottom"):
        raise RegionError(f"a monolingual region is built from top or bottom entries, not {which!r}")
    if len(set(langs)) < 2:
        raise RegionError(f"monolingual regions need a language plus at least one other language to tell apart (got {list(langs)})")
    wanted = list(only or langs)
    indices: dict[str, dict[str, torch.Tensor]] = {lang: {} for lang in wanted}
    shapes: dict[str, tuple[int, ...]] = {}
    informative = dict.fromkeys(wanted, False)
    for name in names:
        chosen = {}
        for lang in langs:
            s = get(lang, name).to(torch.float32).abs()
            if lang in informative:
                informative[lang] |= bool(s.any())
            shapes[name] = tuple(s.shape)
            chosen[lang] = select_tensor(s, int(ratio * s.numel()), which)
        for lang in wanted:
            keep = chosen[lang]
            for other in langs:
                if other != lang:
                    keep = keep[~torch.isin(keep, chosen[other])]
            indices[lang][name] = keep
    for lang in wanted:
        _check_informative(informative[lang], [lang])
    kind = "monolingual" if which == "top" else "monolingual-bottom"
    return {
        lang: Region(indices[lang], dict(shapes), {"kind": kind, "lang": lang, "ratio": ratio, "languages": list(langs), **(metadata or {})}) for lang in wanted
    }
