"""Fast in-process probes on one loaded model: perturbation scans and side-by-side generation.

A scan applies each candidate perturbation in turn to the same model, measures token
perplexity on a small multilingual probe set (the first UDHR documents of each language,
truncated), and restores the changed entries exactly before the next candidate.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lm_eval_lingreg.importance import _split_head
from lm_eval_lingreg.perturbation import Perturbation, parse_spec, perturb
from lm_eval_lingreg.resources import tasks_dir


def probe_texts(langs: Sequence[str], docs: int = 2) -> dict[str, list[str]]:
    """The first `docs` UDHR sections of each language (the evaluation text of `lingreg_ppl`)."""
    out = {}
    for iso in langs:
        path = tasks_dir() / "data" / "udhr" / f"{iso}.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"no UDHR data for {iso!r} at {path}; reinstall lm-eval-lingreg")
        with open(path, encoding="utf-8") as f:
            out[iso] = [json.loads(line)["text"] for _, line in zip(range(docs), f, strict=False)]
    return out


@dataclass
class ProbeSet:
    """Tokenized probe texts, one padded batch, with the language of every row."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    langs: list[str]

    @classmethod
    def build(cls, tokenizer: Any, texts: Mapping[str, Sequence[str]], max_tokens: int = 128) -> ProbeSet:
        rows, langs = [], []
        for iso, items in texts.items():
            for t in items:
                rows.append(tokenizer(t, truncation=True, max_length=max_tokens).input_ids)
                langs.append(iso)
        width = max(len(r) for r in rows)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            attn[i, : len(r)] = 1
        labels = ids.masked_fill(attn == 0, -100)
        return cls(ids, attn, labels, langs)


@torch.no_grad()
def probe_perplexity(model: torch.nn.Module, probe: ProbeSet, chunk: int = 256) -> dict[str, float]:
    """Token perplexity per language (inf when the model's loss overflows)."""
    device = next(model.parameters()).device
    ids, attn, labels = (t.to(device) for t in (probe.input_ids, probe.attention_mask, probe.labels))
    target = labels[:, 1:]
    split = _split_head(model)
    if split is None:
        logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
    else:
        body, head, cap = split
        hidden = body(input_ids=ids, attention_mask=attn)[0][:, :-1]
        flat_h, flat_t = hidden.reshape(-1, hidden.shape[-1]), target.reshape(-1)
        nll = torch.zeros(flat_t.shape, dtype=torch.float32, device=device)
        rows = (flat_t != -100).nonzero().reshape(-1)
        for start in range(0, rows.numel(), chunk):
            sel = rows[start : start + chunk]
            logits = head(flat_h[sel]).float()
            if cap:
                logits = torch.tanh(logits / cap) * cap
            nll[sel] = torch.nn.functional.cross_entropy(logits, flat_t[sel], reduction="none")
        nll = nll.view_as(target)
    nll = nll.masked_fill(target == -100, 0.0).cpu().double()
    counts = (target != -100).sum(1).cpu()
    out: dict[str, list[float]] = {}
    for i, iso in enumerate(probe.langs):
        s, n = out.setdefault(iso, [0.0, 0])
        out[iso] = [s + float(nll[i].sum()), n + int(counts[i])]
    return {iso: _exp(s / max(1, n)) for iso, (s, n) in out.items()}


def _exp(x: float) -> float:
    if math.isnan(x):
        return math.nan
    return math.exp(x) if x < 709 else math.inf


def geometric_mean(values: Sequence[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return math.nan
    if any(v == math.inf for v in vals):
        return math.inf
    return math.exp(sum(math.log(max(v, 1e-300)) for v in vals) / len(vals))


def scan(
    model: torch.nn.Module,
    probe: ProbeSet,
    candidates: Sequence[tuple[str, Sequence[Perturbation]]],
    progress: bool = True,
) -> dict[str, Any]:
    """Perplexity under each candidate, relative to the unperturbed model, ranked.

    Every candidate is validated before the first one runs, and the model is restored exactly
    after each (also on error or Ctrl-C).
    """
    from lm_eval_lingreg.perturbation import resolve
    from lm_eval_lingreg.regions import named_parameters

    params = named_parameters(model)
    for _, perts in candidates:
        for p in perts:
            resolve(p, model, params)
    base = probe_perplexity(model, probe)
    rows = []
    from tqdm.auto import tqdm

    for label, perts in tqdm(candidates, desc="scan", unit="run", disable=not progress):
        with perturb(model, perts) as applied:
            ppl = probe_perplexity(model, probe)
        ratios = {iso: (ppl[iso] / base[iso]) for iso in base}
        rows.append({
            "label": label,
            "spec": ";".join(str(p) for p in perts),
            "entries_changed": applied.entries_changed,
            "perplexity": ppl,
            "ratio": ratios,
            "geomean_ratio": geometric_mean(list(ratios.values())),
        })
    rows.sort(key=lambda r: (-r["geomean_ratio"] if not math.isnan(r["geomean_ratio"]) else math.inf))
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    return {"base_perplexity": base, "langs": sorted(set(probe.langs), key=probe.langs.index), "rows": rows}


def random_dims(hidden: int, k: int, exclude: Sequence[int], seed: int = 0) -> list[int]:
    """`k` dimensions drawn uniformly (seeded) from those not in `exclude`."""
    pool = sorted(set(range(hidden)) - set(exclude))
    if k > len(pool):
        raise ValueError(f"cannot draw {k} random dimensions from the {len(pool)} left")
    return sorted(random.Random(seed).sample(pool, k))


# generation ----------------------------------------------------------------------------------


def parse_condition(text: str) -> list[Perturbation]:
    """`base` (nothing), `mask=core` (zero a region), or perturbations in the compact form."""
    text = text.strip()
    if text.lower() in ("base", "none", ""):
        return []
    return parse_spec(text)


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    conditions: Mapping[str, Sequence[Perturbation]],
    max_new_tokens: int = 24,
) -> list[dict[str, str]]:
    """Greedy continuations of every prompt under every condition (model restored after each)."""
    from transformers import GenerationConfig

    from lm_eval_lingreg.perturbation import resolve
    from lm_eval_lingreg.regions import named_parameters

    params = named_parameters(model)
    for perts in conditions.values():
        for p in perts:
            resolve(p, model, params)
    eos = tokenizer.eos_token_id
    cfg = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos, eos_token_id=eos,
    )
    device = next(model.parameters()).device
    out = []
    for label, perts in conditions.items():
        with perturb(model, perts) if perts else contextlib.nullcontext():
            for prompt in prompts:
                enc = tokenizer(prompt, return_tensors="pt").to(device)
                ids = model.generate(**enc, generation_config=cfg)
                text = tokenizer.decode(ids[0, enc.input_ids.shape[1] :], skip_special_tokens=True)
                out.append({"condition": label, "prompt": prompt, "continuation": text})
    return out
