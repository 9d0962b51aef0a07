"""Selection: per-tensor choice of entries (Top / Bottom / Random), as in the official code.

Selection is per tensor, not global: each tensor contributes `int(ratio * numel)` entries. With
`per_expert`, a fused 3-D expert tensor (experts x rows x cols) contributes `int(ratio * numel / experts)`
entries from each expert's slice instead, so that no expert is left out; other tensors are unaffected.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch

from lm_eval_lingreg.anatomy import experts_of
from lm_eval_lingreg.errors import RegionError
from lm_eval_lingreg.regions import Region

__all__ = ["check_ratio", "select_random", "WHICH", "select_tensor", "select_share", "select_core", "select_monolingual", "select_monolingual_all"]


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


def select_share(score: torch.Tensor, ratio: float, which: str, generator: torch.Generator | None = None, experts: int = 1) -> torch.Tensor:
    """Sorted flat indices of the `ratio` share of one tensor (`select_tensor`), or of each of its `experts`
    leading slices when `experts` > 1."""
    if experts <= 1:
        return select_tensor(score, int(ratio * score.numel()), which, generator)
    slices = score.reshape(experts, -1)
    size = slices.shape[1]
    k = int(ratio * size)
    return torch.cat([select_tensor(s, k, which, generator) + e * size for e, s in enumerate(slices)])


def _experts(name: str, shape: tuple[int, ...], per_expert: bool) -> int:
    return experts_of(name, shape) if per_expert else 1


def select_core(
    get: Callable[[str, str], torch.Tensor],
    names: Iterable[str],
    langs: Sequence[str],
    ratio: float,
    which: str = "top",
    seed: int = 0,
    metadata: Mapping | None = None,
    per_expert: bool = False,
) -> Region:
    """Core region: per tensor (or per expert with `per_expert`), Top/Bottom/Random of S = sum over `langs` of |s_l|.

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
        indices[name] = select_share(total, ratio, which, gen, _experts(name, shapes[name], per_expert))
    _check_informative(informative, langs)
    meta = {
        "kind": f"core-{which}",
        "ratio": ratio,
        "languages": list(langs),
        **({"seed": int(seed)} if which == "random" else {}),
        **({"per_expert": True} if per_expert else {}),
        **(metadata or {}),
    }
    return Region(indices, shapes, meta)


def select_monolingual(
    get: Callable[[str, str], torch.Tensor],
    names: Iterable[str],
    lang: str,
    langs: Sequence[str],
    ratio: float,
    metadata: Mapping | None = None,
    which: str = "top",
    per_expert: bool = False,
) -> Region:
    """Monolingual region of `lang`: Top-k(|s_lang|) minus the union of Top-k(|s_o|), o in `langs` - {lang}.

    `which="bottom"` builds the official code's control the same way from Bottom-k: the entries
    least important to `lang` that are not among the least important to any other language.
    """
    if lang not in langs:
        raise RegionError(f"monolingual region of {lang!r} needs it among --langs plus at least one other language (got {list(langs)})")
    return select_monolingual_all(get, names, langs, ratio, metadata, which, only=[lang], per_expert=per_expert)[lang]


def select_monolingual_all(
    get: Callable[[str, str], torch.Tensor],
    names: Iterable[str],
    langs: Sequence[str],
    ratio: float,
    metadata: Mapping | None = None,
    which: str = "top",
    only: Sequence[str] | None = None,
    per_expert: bool = False,
) -> dict[str, Region]:
    """The monolingual regions of every language of `langs` (or of `only`), each language's k entries chosen once
    (per tensor, or per expert with `per_expert`)."""
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
            chosen[lang] = select_share(s, ratio, which, experts=_experts(name, shapes[name], per_expert))
        for lang in wanted:
            keep = chosen[lang]
            for other in langs:
                if other != lang:
                    keep = keep[~torch.isin(keep, chosen[other])]
            indices[lang][name] = keep
    for lang in wanted:
        _check_informative(informative[lang], [lang])
    kind = "monolingual" if which == "top" else "monolingual-bottom"
    extra = {"per_expert": True} if per_expert else {}
    return {
        lang: Region(indices[lang], dict(shapes), {"kind": kind, "lang": lang, "ratio": ratio, "languages": list(langs), **extra, **(metadata or {})})
        for lang in wanted
    }
