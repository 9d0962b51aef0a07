"""Perturbation scans: one perturbation per candidate dimension on one loaded model, ranked by effect.

Each candidate is applied to the same model, token perplexity is measured on a small
multilingual probe set (the first UDHR documents of each language, truncated), and the changed
entries are restored exactly before the next candidate.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lm_eval_lingreg.errors import CorpusError, UsageError
from lm_eval_lingreg.interventions import check_all, perturb
from lm_eval_lingreg.lm_loss import next_token_labels, pad_batch, token_nll
from lm_eval_lingreg.perturbation import Perturbation
from lm_eval_lingreg.resources import tasks_dir
from lm_eval_lingreg.results import geomean, safe_exp
from lm_eval_lingreg.strict import parse_whole, shown


def probe_texts(langs: Sequence[str], docs: int = 2) -> dict[str, list[str]]:
    """The first `docs` UDHR sections of each language (the evaluation text of `lingreg_ppl`)."""
    from lm_eval_lingreg.evaluation import UDHR_DOCUMENTS

    if not 1 <= docs <= UDHR_DOCUMENTS:
        raise UsageError(f"--docs must be between 1 and {UDHR_DOCUMENTS} (the UDHR documents of each language), got {docs}")
    out = {}
    for iso in langs:
        path = tasks_dir() / "data" / "udhr" / f"{iso}.jsonl"
        if not path.is_file():
            raise CorpusError(f"no UDHR data for {iso!r} at {path}; reinstall lm-eval-lingreg")
        with open(path, encoding="utf-8") as f:
            out[iso] = [json.loads(line)["text"] for _, line in zip(range(docs), f, strict=False)]
    return out


@dataclass
class ProbeSet:
    """Token id rows, one padded batch, with the language of every row."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    langs: list[str]

    @classmethod
    def from_ids(cls, rows: Sequence[tuple[str, Sequence[int]]], pad_id: int = 0) -> ProbeSet:
        """From (language, token ids) rows."""
        if not rows:
            raise CorpusError("empty probe set: no text to measure perplexity on")
        ids, attn = pad_batch([r for _, r in rows], pad_id)
        return cls(ids, attn, [lang for lang, _ in rows])

    @classmethod
    def build(cls, tokenizer: Any, texts: Mapping[str, Sequence[str]], max_tokens: int = 128) -> ProbeSet:
        """Tokenize texts (BOS added as the tokenizer does), truncated to `max_tokens`."""
        if max_tokens < 2:
            raise UsageError(f"tokens per probe document must be at least 2, got {max_tokens}")
        rows = [(iso, tokenizer(t, truncation=True, max_length=max_tokens).input_ids) for iso, items in texts.items() for t in items]
        return cls.from_ids(rows, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def probe_perplexity(model: torch.nn.Module, probe: ProbeSet) -> dict[str, float]:
    """Token perplexity per language (inf when the model's loss overflows)."""
    device = model_device(model)
    ids, attn = probe.input_ids.to(device), probe.attention_mask.to(device)
    labels = next_token_labels(ids, attn)
    nll = token_nll(model, ids, attn, labels).cpu().double()
    counts = (labels != -100).sum(1).cpu()
    sums: dict[str, list[float]] = {}
    for i, iso in enumerate(probe.langs):
        s, n = sums.setdefault(iso, [0.0, 0])
        sums[iso] = [s + float(nll[i].sum()), n + int(counts[i])]
    return {iso: safe_exp(s / max(1, n)) for iso, (s, n) in sums.items()}


@dataclass(frozen=True)
class Candidate:
    """One scan run: a label, the dimension it probes (if any) and its perturbations."""

    label: str
    perturbations: tuple[Perturbation, ...]
    dim: int | None = None


def random_dims(hidden: int, k: int, exclude: Sequence[int], seed: int = 0) -> list[int]:
    """`k` dimensions drawn uniformly (seeded) from those not in `exclude`."""
    pool = sorted(set(range(hidden)) - set(exclude))
    if k > len(pool):
        if not hidden:
            raise UsageError("cannot draw random dimensions: the model's hidden size is unknown (give the dimensions with --dims N,M)")
        raise UsageError(
            f"cannot draw {k} random dimensions: the hidden size is {hidden}, and {hidden - len(pool)} of them are excluded; ask for at most {len(pool)}"
        )
    return sorted(random.Random(seed).sample(pool, k))


def pick_dimensions(spec: str, ranked: Sequence[int] | None, hidden: int, seed: int = 0) -> list[tuple[str, int]]:
    """(source, dimension) pairs from `top:N,random:N,97,...`: the region's top dimensions, seeded
    random controls drawn outside them, and given dimensions."""
    out: list[tuple[str, int]] = []
    n_random = 0
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        kind, _, n = part.partition(":")
        if kind in ("top", "random"):
            count = parse_whole(n, UsageError, f"--dims {kind}:<count> (e.g. {kind}:20)", minimum=1)
            if kind == "top":
                if ranked is None:
                    raise UsageError("--dims top:N needs a region to rank dimensions (--mask)")
                out += [(f"top{i + 1}", d) for i, d in enumerate(ranked[:count])]
            else:
                n_random = count
        elif re.fullmatch(r"\s*[0-9]+\s*", part):
            d = parse_whole(part, UsageError, "--dims")
            if d >= hidden:
                raise UsageError(f"--dims {d}: out of range (hidden size {hidden})")
            out.append(("given", d))
        else:
            raise UsageError(f"--dims {shown(part)}: use top:N, random:N or dimension numbers, comma-separated")
    if n_random:
        out += [("random", d) for d in random_dims(hidden, n_random, [d for _, d in out] + list(ranked[:n_random] if ranked else []), seed)]
    if not out:
        raise UsageError(f"--dims {shown(spec)}: no candidate dimensions")
    return out


def dimension_candidates(
    dims: Sequence[tuple[str, int]],
    *,
    param: str | None = None,
    layers: tuple[int, ...] | None = (1,),
    modules: tuple[str, ...] = ("all",),
    label_prefix: str = "",
    **op: Any,
) -> list[Candidate]:
    """One candidate per dimension: one entry of `param` at index d, or every entry on dimension d in `layers`."""

    def one(d: int) -> Perturbation:
        if param:
            return Perturbation(param=param, index=d, **op)
        return Perturbation(dims=(d,), layers=layers, modules=modules, **op)

    return [Candidate(f"{label_prefix}{src}:d{d}", (one(d),), d) for src, d in dims]


def template(candidates: Sequence[Candidate]) -> str:
    """What every candidate does, with the dimension as `<d>` (the candidates differ only there)."""
    spec = candidates[0].perturbations[0].to_dict()
    for key in ("dims", "index"):
        if key in spec:
            spec[key] = "<d>"
    return ":".join(
        f"{k}={'+'.join(map(str, v)) if isinstance(v, list) else v}" for k, v in spec.items() if (k, v) not in (("on", "param"), ("modules", ["all"]))
    )


def scan(
    model: torch.nn.Module,
    probe: ProbeSet,
    candidates: Sequence[Candidate | tuple[str, Sequence[Perturbation]]],
    progress: bool = True,
    tokenizer: Any = None,
) -> dict[str, Any]:
    """Perplexity under each candidate, relative to the unperturbed model, ranked (`tokenizer`: for `op=mean`).

    Every candidate is validated before the first one runs, and the model is restored exactly
    after each (also on error or Ctrl-C).
    """
    from tqdm.auto import tqdm

    cands = [c if isinstance(c, Candidate) else Candidate(c[0], tuple(c[1])) for c in candidates]
    for c in cands:
        check_all(model, c.perturbations)
    base = probe_perplexity(model, probe)
    rows = []
    for c in tqdm(cands, desc="scan", unit="run", disable=not progress):
        with perturb(model, c.perturbations, tokenizer=tokenizer) as applied:
            ppl = probe_perplexity(model, probe)
        ratios = {iso: (ppl[iso] / base[iso]) for iso in base}
        rows.append(
            {
                "label": c.label,
                **({"dim": c.dim} if c.dim is not None else {}),
                "spec": ";".join(str(p) for p in c.perturbations),
                "entries_changed": applied.entries_changed,
                "perplexity": ppl,
                "ratio": ratios,
                "geomean_ratio": geomean(ratios.values()),
            }
        )
    rows.sort(key=lambda r: -r["geomean_ratio"] if not math.isnan(r["geomean_ratio"]) else math.inf)
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    return {"base_perplexity": base, "langs": sorted(set(probe.langs), key=probe.langs.index), "rows": rows}
